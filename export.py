"""Export: merge every trained stage into one folder of safetensors + JSON + tokenizer (nothing pickled).

    python export.py --omni_ckpt checkpoints/omni_sft_tiny --thinker_ckpt checkpoints/thinker_tiny \
        --audio_ckpt checkpoints/audio_enc_tiny --vision_ckpt checkpoints/vision_tiny \
        --talker_ckpt checkpoints/talker_tiny --output_dir merged_model
    python export.py --thinker_ckpt checkpoints/thinker_tiny --hf_thinker hf_out     # Thinker as HF Qwen3 only

Each --X_ckpt is a stage's run dir (its final-weights file is found by name: thinker.pt, audio_enc.pt, vision.pt,
talker.pt (+ rvq_codec.pt beside it), hifigan.pt, ocr.pt, omni_final.pt) or the file itself. Components not given
are absent from the export (config.json lists them). --omni_ckpt (Stage E) holds only the parameters it trained;
they are laid over the stage weights and the overridden/added tensors are listed. Load the result with
`omni.load_exported(output_dir)`; the format is described in omni/export_format.py (written by
omni/export_writer.py, read by omni/export_reader.py), the components
and their stage files in omni/components.py.
"""

import argparse
from pathlib import Path

from omni.components import ExportError, read_sft_weights, read_stage_weights, stage_config
from omni.export_format import DTYPES, component_state, prefix
from omni.export_writer import merge_trainable, write_export
from omni.tokenizer import TOKENIZER_FILE, Tokenizer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--thinker_ckpt", help="Stage A run dir or thinker.pt (tokenizer.model is read beside it)")
parser.add_argument("--audio_ckpt", help="Stage B run dir or audio_enc.pt (audio encoder + CTC head)")
parser.add_argument("--vision_ckpt", help="Stage C run dir or vision.pt")
parser.add_argument("--talker_ckpt", help="Stage D run dir or talker.pt (its codec: rvq_codec.pt beside it)")
parser.add_argument("--codec_ckpt", help="rvq_codec.pt or its run dir, when not beside talker.pt (or without a Talker)")
parser.add_argument("--vocoder_ckpt", help="vocoder run dir or hifigan.pt (generator only)")
parser.add_argument("--ocr_ckpt", help="OCR run dir or ocr.pt")
parser.add_argument("--omni_ckpt", help="Stage E run dir or omni_final.pt (trainable-only parameters)")
parser.add_argument("--tokenizer", help=f"tokenizer.model to export (default: the {TOKENIZER_FILE} beside thinker.pt)")
parser.add_argument("--output_dir", help="export folder to write (a previous export there is updated; files it did "
                    "not write are kept)")
parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the floating tensors")
parser.add_argument("--hf_thinker", metavar="DIR", help="also write the Thinker as a Hugging Face Qwen3 checkpoint")
args = parser.parse_args()
if not (args.output_dir or args.hf_thinker):
    parser.error("nothing to write: give --output_dir and/or --hf_thinker")



def read_stage(flag: str, path: str, component: str):
    try:
        return read_stage_weights(path, component)
    except ExportError as e:
        raise ExportError(f"{flag}: {e}") from None


try:
    # ---- read every given stage (each is checked against its model class where that exists)
    parts = []
    for flag, component in (("thinker_ckpt", "thinker"), ("audio_ckpt", "audio_encoder"),
                            ("vision_ckpt", "vision_encoder"), ("talker_ckpt", "talker"), ("vocoder_ckpt", "vocoder"),
                            ("ocr_ckpt", "ocr")):
        if getattr(args, flag):
            parts.append(read_stage(f"--{flag}", getattr(args, flag), component))
    talker = next((p for p in parts if p.component == "talker"), None)
    codec_path = args.codec_ckpt or (talker.source.parent if talker else None)
    if codec_path is not None:  # the Talker speaks through its codec: it is required with a Talker
        parts.append(read_stage("--codec_ckpt (or rvq_codec.pt beside talker.pt)", codec_path, "codec"))
    sft = None
    if args.omni_ckpt:
        try:
            sft = read_sft_weights(args.omni_ckpt)
        except ExportError as e:
            raise ExportError(f"--omni_ckpt: {e}") from None
    if not parts and sft is None:
        parser.error("no checkpoint given: pass at least one --X_ckpt")

    # the tokenizer: --tokenizer, else the one beside thinker.pt, else the one beside talker.pt
    thinker = next((p for p in parts if p.component == "thinker"), None)
    beside = [p.source.parent / TOKENIZER_FILE for p in (thinker, talker) if p is not None]
    tokenizer_path = args.tokenizer or next((f for f in beside if f.is_file()), beside[0] if beside else None)
    tokenizer = Tokenizer.load(tokenizer_path) if tokenizer_path else None

    # ---- the merged export folder
    if args.output_dir:
        config = write_export(args.output_dir, parts, dtype=args.dtype, tokenizer=tokenizer, sft=sft)
        print(f"wrote {args.output_dir} ({args.dtype}): present {config['components_present']}, "
              f"absent {config['components_absent']}")
        if "stage_e" in config:
            e = config["stage_e"]
            print(f"  Stage E ({e['source']}): overrode {len(e['overridden'])} tensors, added {len(e['added'])}")
        for alias, owner in config["tied_weights"].items():
            print(f"  tied: {alias} stored once as {owner}")

    # ---- the Thinker as a Hugging Face checkpoint (with Stage E's Thinker updates, if any)
    if args.hf_thinker:
        if thinker is None:
            parser.error("--hf_thinker needs --thinker_ckpt")
        from omni.hf_export import write_hf_thinker

        state = prefix(thinker.state, "thinker")
        if sft is not None:
            state, _ = merge_trainable(state, {k: v for k, v in sft[0].items() if k.startswith("thinker.")})
        cfg = stage_config(thinker)
        write_hf_thinker(args.hf_thinker, component_state(state, "thinker"), cfg, tokenizer=tokenizer,
                         dtype=args.dtype)
        arch = "Qwen3MoeForCausalLM" if cfg.n_experts else "Qwen3ForCausalLM"
        print(f"wrote {Path(args.hf_thinker)} (Hugging Face {arch}, {args.dtype})")
except (ExportError, ValueError, OSError) as e:
    parser.exit(1, f"export.py: error: {e}\n")
