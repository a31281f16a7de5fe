# `make demo` runs the main job on embedded defaults; `make test` runs the test suite.
# Both set up the machine first (apt packages when missing, .venv/ from pinned constraints).
.PHONY: setup demo test lint format clean

setup:
	@bash scripts/setup.sh

# synth -> ingest -> the debug curriculum on the ingested shards (mel space, tiny DiT, 2 CPU
# workers). With no codec at models/encodec_24khz (nothing can be downloaded here) the demo saves
# a random-weight EnCodec there: its codes are placeholders, flagged in every record. Ten movies
# are too few for the 5 % hash splits to hold any out, so the demo pins one movie each to val
# and test.
demo: setup
	.venv/bin/dubforge run jobs/synth.yaml
	test -f models/encodec_24khz/config.json || .venv/bin/dubforge random-codec models/encodec_24khz
	.venv/bin/dubforge run jobs/ingest.yaml split.pinned.val=[movie_008] split.pinned.test=[movie_009]
	.venv/bin/dubforge run jobs/curriculum_debug.yaml

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache .ruff_cache
