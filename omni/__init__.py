"""omni: a tiny omni-modal model (text, image, speech in; text, speech out) trained stage by stage."""
