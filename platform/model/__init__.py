"""The dubber: a flow-matching DiT over codec or mel latents with text, voice, video and label conditions."""
