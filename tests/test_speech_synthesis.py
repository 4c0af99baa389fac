"""omni.speech: text -> Talker -> codec -> vocoder composition, the Griffin-Lim fallback (never an untrained
generator), loading from the stages' final weights, and the TTS -> ASR CER."""

import dataclasses
import json

import pytest
import torch

from omni import speech
from omni.asr import Transcriber
from omni.codec import Codec, CodecConfig
from omni.ctc import CharVocab
from omni.speech import SpeechSynthesizer, Vocoder, intelligibility
from omni.talker import Talker, TalkerConfig
from omni.text_frontend import text_units
from omni.tokenizer import train_tokenizer
from omni.training.checkpoint import atomic_save
from omni.vocoder import Generator, VocoderConfig, griffin_lim
from tests.stage_data import random_aligner

N_MELS, VOCAB = 16, 400
VOCODER = VocoderConfig(n_mels=N_MELS, upsample_initial_channels=16, resblock_kernel_sizes=(3,),
                        resblock_dilations=((1,),))


@pytest.fixture(scope="module")
def parts(tmp_path_factory, text_corpus):
    """A talker run dir as train_talker.py leaves it (random tiny weights): talker.pt, rvq_codec.pt, tokenizer."""
    folder = tmp_path_factory.mktemp("talker")
    tokenizer = train_tokenizer([text_corpus / "train.txt"], folder, vocab_size=VOCAB)
    torch.manual_seed(0)
    codec = Codec(CodecConfig(n_mels=N_MELS, channels=8, latent_dim=8, n_codebooks=2, codebook_size=16)).eval()
    talker = Talker(TalkerConfig(text_vocab_size=VOCAB, n_codebooks=2, codebook_size=16, d_model=16, n_layers=1,
                                 n_decoder_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, max_frames=40)).eval()
    with torch.no_grad():  # about 2 frames per unit (a fresh duration head says ~0: nothing would be spoken)
        talker.duration.out.bias.fill_(1.1)
    for name, model in (("talker.pt", talker), ("rvq_codec.pt", codec)):
        atomic_save({"model": model.state_dict(), "config": dataclasses.asdict(model.cfg)}, folder / name)
    return folder, tokenizer, talker, codec


def expected_mel(parts, synth, text):
    _, tokenizer, talker, codec = parts
    units = text_units(tokenizer, text)
    codes, lengths, probs = talker.generate(torch.tensor([units.chars]), torch.tensor([units.tokens]),
                                            return_probs=True)
    assert 0 < lengths[0] < talker.cfg.max_frames  # the predicted durations, not the cap, decide the length
    # Greedy synthesis decodes each frame's expected code vector, not its most likely codes.
    expected = codec.decode_latents(codec.expected_latents(probs[:, : int(lengths[0])]))
    assert not torch.allclose(expected, codec.decode(codes[:, : int(lengths[0])]))
    return expected


def test_griffin_lim_fallback_is_used_and_logged_without_final_vocoder_weights(tmp_path, parts):
    unfinished = tmp_path / "vocoder"  # a vocoder run that has step checkpoints but no hifigan.pt yet
    unfinished.mkdir()
    atomic_save({"model": Generator(VOCODER).state_dict(), "step": 2}, unfinished / "hifigan_step_2.pt")
    for where in (None, unfinished, tmp_path / "missing.pt"):
        said = []
        vocoder = Vocoder.load(where, log=said.append)
        assert vocoder.name == "griffin-lim" and vocoder.generator is None
        assert len(said) == 1 and "Griffin-Lim" in said[0] and (where is None or str(where) in said[0])
    said = []
    synth = SpeechSynthesizer.from_checkpoints(parts[0], vocoder=unfinished, log=said.append)
    assert synth.vocoder.name == "griffin-lim" and "Griffin-Lim" in said[0]
    text = "a red circle"
    mel = expected_mel(parts, synth, text)
    wav = synth.synthesize(text)
    assert mel.shape[1] > 0 and wav.shape == (mel.shape[1] * 160,)
    torch.testing.assert_close(wav, griffin_lim(mel, n_iter=32)[0])

    def ends_at_once(chars, tokens, **kwargs):
        return torch.zeros(1, 0, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(1, 0, 2, 16)

    synth.talker.generate = ends_at_once
    assert synth.synthesize(text).shape == (0,)
    del synth.talker.generate


def test_hifigan_final_weights_are_used_when_present(tmp_path, parts):
    generator = Generator(VOCODER).eval()
    atomic_save({"model": generator.state_dict(), "config": dataclasses.asdict(VOCODER)}, tmp_path / "hifigan.pt")
    said = []
    synth = SpeechSynthesizer.from_checkpoints(parts[0], vocoder=tmp_path, log=said.append)
    assert synth.vocoder.name == "hifigan" and "HiFi-GAN" in said[0]
    text = "two blue squares"
    mel = expected_mel(parts, synth, text)
    with torch.no_grad():
        torch.testing.assert_close(synth.synthesize(text), generator(mel)[0])


def test_mismatched_parts_are_refused(parts):
    _, tokenizer, talker, codec = parts
    other = Codec(CodecConfig(n_mels=N_MELS, channels=8, latent_dim=8, n_codebooks=2, codebook_size=32))
    with pytest.raises(ValueError, match="2 x 16 codes.*2 x 32"):
        SpeechSynthesizer(tokenizer, talker, other, Vocoder())
    wide = Generator(dataclasses.replace(VOCODER, n_mels=32))
    with pytest.raises(ValueError, match="32 mel bins.*16"):
        SpeechSynthesizer(tokenizer, talker, codec, Vocoder(wide))


def write_asr(folder):
    """A Stage-B audio_enc.pt with random tiny weights in folder; returns its CTC characters."""
    return CharVocab.from_list(torch.load(random_aligner(folder), weights_only=True)["vocab"])


def test_transcriber_reads_stage_b_weights_and_cer_is_summed_over_the_corpus(tmp_path, parts):
    vocab = write_asr(tmp_path)
    asr = Transcriber.load(tmp_path)
    hyps = asr.transcribe([0.1 * torch.randn(16000), torch.zeros(100)])
    assert len(hyps) == 2 and set(hyps[0]) <= set(vocab.to_list()) and hyps[1] == ""  # too short: nothing heard

    class Echo:  # hears the first sentence perfectly and the second not at all
        def transcribe(self, wavs):
            self.calls = getattr(self, "calls", 0) + 1
            return ["a red circle"] if self.calls == 1 else [""]

    synth = SpeechSynthesizer.from_checkpoints(parts[0], log=lambda _: None)
    result = intelligibility(synth, Echo(), ["A red circle.", "six boxes"], log=lambda _: None)
    assert result["cer"] == pytest.approx(len("six boxes") / (len("a red circle") + len("six boxes")))
    assert result["wer"] == pytest.approx(2 / 5) and result["sentences"] == 2 and result["vocoder"] == "griffin-lim"
    assert result["samples"][0] == {"text": "a red circle", "asr": "a red circle",
                                    "seconds": pytest.approx(result["samples"][0]["seconds"])}


def test_cli_scores_sentences_and_phrases_apart(tmp_path, parts):
    write_asr(tmp_path)
    manifest = tmp_path / "val.jsonl"
    manifest.write_text("".join(json.dumps({"audio": f"{i}.wav", "text": t}) + "\n"
                                for i, t in enumerate(["a red circle", "six boxes", "not read"])))
    train = tmp_path / "train.jsonl"  # as the synthetic sets write it: phrases (repeated) after the sentences
    train.write_text("".join(json.dumps({"audio": f"{i}.wav", "text": t, **({"phrase": True} if p else {})}) + "\n"
                             for i, (t, p) in enumerate([("six boxes", False), ("black", True), ("top left", True),
                                                         ("black", True)])))
    speech.main(["--talker", str(parts[0]), "--asr", str(tmp_path), "--manifest", str(manifest), "--n", "2",
                 "--phrases", str(train), "--json", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["sentences"] == 2 and result["phrases"]["sentences"] == 2
    assert [s["text"] for s in result["samples"]] == ["a red circle", "six boxes"]
    assert [s["text"] for s in result["phrases"]["samples"]] == ["black", "top left"]
    assert result["phrases"]["cer"] >= 0 and result["vocoder"] == "griffin-lim"
