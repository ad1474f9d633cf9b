"""DistilBERT <-> BERT and DistilGPT2 <-> GPT-2, the paper's off-the-shelf pairs, on tiny models."""

import pytest
import torch
from tiny import ids, make_student, make_teacher, perturb
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

import boomerang as B
from boomerang.core.encoders import bert_names


def distil_from_bert(bert, layer_map, seed=3):
    """A DistilBERT initialised from BERT layers the way DistilBERT was (then perturbed)."""
    c = bert.config
    cfg = DistilBertConfig(
        vocab_size=c.vocab_size,
        dim=c.hidden_size,
        n_heads=c.num_attention_heads,
        hidden_dim=c.intermediate_size,
        n_layers=layer_map.n_student,
        max_position_embeddings=c.max_position_embeddings,
        activation=c.hidden_act,
        dropout=0.0,
        attention_dropout=0.0,
    )
    d = DistilBertForMaskedLM(cfg).eval()
    bsd = bert.state_dict()
    new = {}
    for name in d.state_dict():
        targets = bert_names(name)
        m = name.split(".")
        if name.startswith("distilbert.transformer.layer."):
            j = layer_map.kept[int(m[3])]
            targets = [t.replace(f"encoder.layer.{m[3]}.", f"encoder.layer.{j}.") for t in targets]
        new[name] = bsd[targets[0]].clone()
    d.load_state_dict(new)
    return perturb(d, 0.05, seed)


@pytest.fixture
def bert_pair():
    bert = make_teacher("bert", n_layers=12)
    lm = B.LayerMap.preset("distilbert")
    return bert, distil_from_bert(bert, lm), lm


def mlm_logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_distilbert_in_bert_layout_is_exact(bert_pair):
    bert, distil, lm = bert_pair
    x = ids()
    k0 = B.patch(bert, distil, lm, num_patched=0)
    assert type(k0).__name__ == "BertForMaskedLM"
    assert torch.equal(mlm_logits(k0, x), mlm_logits(distil, x))
    kM = B.patch(bert, distil, lm, num_patched=lm.n_student)
    assert torch.equal(mlm_logits(kM, x), mlm_logits(bert, x))


def test_patched_bert_blocks_compute_what_bert_computes(bert_pair):
    bert, distil, lm = bert_pair
    x = ids()
    # student layers 4, 5 -> BERT layers 9, 10, 11 and BERT's head
    m = B.patch(bert, distil, lm, num_patched=2)
    with torch.no_grad():
        h = distil.distilbert.embeddings(x)
        for layer in distil.distilbert.transformer.layer[:4]:
            h = layer(h)
        for j in (9, 10, 11):
            h = bert.bert.encoder.layer[j](h)
        expected = bert.cls(h)
    assert torch.allclose(mlm_logits(m, x), expected, atol=1e-6, rtol=0)
    assert m.config.boomerang["teacher_layers"] == [0, 2, 4, 7, 9, 10, 11]


def test_bert_family_saves_and_reloads(tmp_path, bert_pair):
    bert, distil, lm = bert_pair
    x = ids()
    for k in range(lm.n_student + 1):
        m = B.patch(bert, distil, lm, num_patched=k)
        m.save_pretrained(tmp_path / str(k))
        again = AutoModelForMaskedLM.from_pretrained(tmp_path / str(k)).eval()
        assert torch.equal(mlm_logits(again, x), mlm_logits(m, x))


def test_distilbert_mismatch_is_reported(bert_pair):
    bert, _, lm = bert_pair
    other = DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=96, dim=32, n_heads=4, hidden_dim=48, n_layers=6)
    ).eval()
    with pytest.raises(B.BoomerangError, match="MLP size"):
        B.patch(bert, other, lm, num_patched=1)


def test_distilgpt2_preset_family():
    gpt2 = make_teacher("gpt2", n_layers=12)
    lm = B.LayerMap.preset("distilgpt2")
    distil = make_student(gpt2, lm)
    x = ids()
    sizes = []
    for k in range(lm.n_student + 1):
        m = B.patch(gpt2, distil, lm, num_patched=k)
        sizes.append(m.config.n_layer)
        assert isinstance(m, type(gpt2))
    assert sizes == [6, 6, 7, 8, 10, 11, 12]  # blocks of [0, 2, 4, 7, 9, 11]: sizes 2, 2, 3, 2, 2, 1
    with torch.no_grad():
        assert torch.equal(B.patch(gpt2, distil, lm, num_patched=6)(x).logits, gpt2(x).logits)


def test_gpt2_inverse_layer_scaling_is_refused():
    gpt2 = make_teacher("gpt2", n_layers=4, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(B.BoomerangError, match="scale_attn_by_inverse_layer_idx"):
        B.get_arch(gpt2.config)


def test_reload_through_auto_causal_lm(tmp_path):
    gpt2 = make_teacher("gpt2", n_layers=12)
    lm = B.LayerMap.preset("distilgpt2")
    m = B.patch(gpt2, make_student(gpt2, lm), lm, num_patched=3)
    m.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = ids()
    with torch.no_grad():
        assert torch.equal(again(x).logits, m(x).logits)
