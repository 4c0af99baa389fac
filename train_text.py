"""Stage A: train the SentencePiece tokenizer and the Thinker language model on a text corpus.

    python train_text.py --config configs/thinker_tiny.json [--set train.max_steps=2000 ...]

Rerunning the same command resumes from the newest checkpoint in train.save_dir. The metric is validation
perplexity over every token of data.val_path. Final weights: <save_dir>/thinker.pt (+ tokenizer.model beside it).
"""

import sys

from omni import evaluation
from omni.builders import build_text
from omni.components import thinker_weights
from omni.config import load_config
from omni.data import fingerprint
from omni.data.resumable import ResumableDataset
from omni.data.text import TokenWindows, build_token_cache, open_tokens, token_cache_path
from omni.data.text_sources import open_corpus
from omni.stages import TextStage
from omni.tokenizer import TOKENIZER_FILE, Tokenizer, train_tokenizer
from omni.training import Run
from omni.training.distributed import barrier

cfg, args = load_config(TextStage, description=__doc__)
run = Run(cfg, name="thinker", metric="val_ppl", mode="min", force=args.force)

# ---- tokenizer and data (rank 0 builds, the others wait and load)
tokenizer_path = cfg.data.tokenizer or run.run_dir / TOKENIZER_FILE
if run.is_main:
    # Any layout omni.data.text_sources reads (file, folder or glob of .txt/.jsonl/.parquet shards); logged there.
    train_corpus, val_corpus = open_corpus(cfg.data.train_path), open_corpus(cfg.data.val_path)
    # The tokenizer trained here is this run's for good (the model's ids depend on it), even when the corpus changes.
    sample = {"sample_docs": cfg.data.tokenizer_sample_docs, "sample_bytes": cfg.data.tokenizer_sample_bytes}
    trained_on = fingerprint.cache_inputs(train_corpus.shards, vocab_size=cfg.model.vocab_size,
                                          model_type=cfg.data.tokenizer_model_type, **sample)
    if cfg.data.tokenizer is None and not tokenizer_path.exists():
        run.info(f"training a {cfg.model.vocab_size}-piece tokenizer on {cfg.data.train_path}")
        train_tokenizer([train_corpus], run.run_dir, vocab_size=cfg.model.vocab_size,
                        model_type=cfg.data.tokenizer_model_type, **sample, log=run.info)
        fingerprint.record_built(tokenizer_path, trained_on)
    elif (cfg.data.tokenizer is None and fingerprint.read_record(tokenizer_path)  # (none: trained before records)
          and (why := fingerprint.stale_reason(tokenizer_path, trained_on))):
        run.info(f"WARNING: keeping this run's {tokenizer_path}, although it was trained on other data ({why}); "
                 "use a new train.save_dir for a tokenizer of the corpus as it is now")
    tokenizer = Tokenizer.load(tokenizer_path)
    build_token_cache(train_corpus, tokenizer, log=run.info)
    build_token_cache(val_corpus, tokenizer, log=run.info)
barrier()
tokenizer = Tokenizer.load(tokenizer_path)
if tokenizer.vocab_size != cfg.model.vocab_size:
    raise SystemExit(f"{tokenizer_path} has {tokenizer.vocab_size} pieces, model.vocab_size is {cfg.model.vocab_size}")
train_cache, val_cache = (token_cache_path(p, tokenizer) for p in (cfg.data.train_path, cfg.data.val_path))
train_tokens = open_tokens(train_cache, tokenizer.vocab_size)
val_tokens = open_tokens(val_cache, tokenizer.vocab_size)
train_set = ResumableDataset(TokenWindows(train_tokens, cfg.data.seq_len, name=cfg.data.train_path),
                             batch_size=cfg.train.batch_size, seed=cfg.train.seed)
val_source = TokenWindows(val_tokens, cfg.data.seq_len, name=cfg.data.val_path)  # too short: an error, here
run.info(f"corpus: {len(train_tokens):,} training tokens, {len(val_tokens):,} validation tokens")

# ---- model
built = build_text(cfg)
model = run.setup(built.model, built.optimizer(), train_set)
if run.is_main:  # a resumed run whose corpus changed under it says so
    fingerprint.note_run_data(run.run_dir, {"data.train_path": fingerprint.content_digest(train_cache),
                                            "data.val_path": fingerprint.content_digest(val_cache)},
                              resumed=run.step > 0, log=run.info)


def evaluate() -> dict:
    return evaluation.text_metrics(run, val_source, batch_size=cfg.data.val_batch_size, tokenizer=tokenizer,
                                   sample_prompts=cfg.data.sample_prompts, sample_tokens=cfg.data.sample_tokens)


# ---- loop
for batch in run.batches(train_set):
    with run.micro_step():
        _, loss = model(batch["inputs"], targets=batch["targets"])
        run.backward(loss)
    if run.optimizer_step():
        run.log(loss=loss)
        run.maybe_evaluate(evaluate)
        run.maybe_checkpoint()

if run.stopped:  # SIGTERM / Ctrl-C: the last step is checkpointed; rerunning the same command resumes
    sys.exit(0)

# ---- save
metrics = run.finish(evaluate, final_weights=thinker_weights(run.raw_model, cfg.model))
if run.is_main and cfg.data.tokenizer is not None:
    tokenizer.save(run.run_dir)
print(f"val_ppl {metrics['val_ppl']:.3f}")
