"""The dubber: a flow-matching DiT over codec or mel latents with text, voice, video and
label conditions (pure PyTorch, no Ray; nothing runs at import).

    from dubforge.model.config import ModelConfig
    from dubforge.model.presets import build_model, space_from_config, sampler_kwargs
    from dubforge.model.batch import collate, to_waves
    from dubforge.model.checkpoint import save_checkpoint, load_checkpoint

    space = space_from_config(cfg.space)               # "mel" or "codec"
    model = build_model(cfg, space)                    # preset sizes, objective settings
    batch = collate(records, space, allowed=cfg.tasks) # records: (meta, arrays) from ingest
    model.loss(batch)["loss"].backward()               # {"loss", "cfm", "dur"}
    latents = model.sample(batch, seed=0, **sampler_kwargs(cfg))
    waves = to_waves(space, latents, batch)            # [{"speech": wave, "background": ...}]

Modules: spaces (acoustic spaces), modules (blocks), conditions (encoders), dit (backbone),
dubber (the model), flow (objective + sampler), batch (records -> tensors), presets (sizes,
builders), config (typed config), checkpoint (inference export).
"""
