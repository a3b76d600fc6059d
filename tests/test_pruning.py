"""Importance and pruning on a tiny random Llama built in the test."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from distill.errors import DistillError
from distill.pruning import Importance, LlmShape, compute_importance, prune
from distill.pruning.prune import head_groups


def tiny_llama(tied: bool = True, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      tie_word_embeddings=tied)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def batches(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (2, 16), generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def model_and_importance():
    model = tiny_llama()
    return model, compute_importance(model, batches(), depth_batches=2, progress=False)


def test_importance_shapes_and_values(model_and_importance):
    model, imp = model_and_importance
    assert imp.embedding.shape == (48,) and imp.neurons.shape == (3, 48) and imp.heads.shape == (3, 6)
    assert imp.block.shape == imp.layer_drop_loss.shape == (3,) and imp.sequences == 6
    assert (imp.embedding > 0).all() and (imp.block > 0).all()


def test_neuron_importance_by_hand():
    """One batch of 2 sequences: importance = L2 over the batch of each sequence's mean |down_proj input|."""
    model = tiny_llama(layers=1)
    ids = batches(1)[0]
    seen = {}
    h = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    model(input_ids=ids)
    h.remove()
    expected = seen["x"].abs().mean(1).pow(2).sum(0).sqrt()
    imp = compute_importance(model, [ids], depth_batches=1, progress=False)
    torch.testing.assert_close(imp.neurons[0], expected)


def test_importance_round_trips(tmp_path, model_and_importance):
    _, imp = model_and_importance
    imp.save(tmp_path)
    back = Importance.load(tmp_path)
    torch.testing.assert_close(back.heads, imp.heads)
    assert back.base_loss == imp.base_loss


def test_heads_are_kept_evenly_within_kv_groups():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.8, 0.2, 0.3])  # groups {0,1,2}, {3,4,5}
    assert head_groups(scores, kv_heads=2, keep=4).tolist() == [1, 2, 3, 5]


@pytest.mark.parametrize("tied", [True, False])
def test_pruned_shapes_export_and_equal_logits(tmp_path, tied):
    model = tiny_llama(tied=tied)
    imp = compute_importance(model, batches(), depth_batches=2, progress=False)
    shape = LlmShape.of(model.config)
    target = shape.with_(hidden=36, ffn=32, heads=4, layers=2)
    pruned = prune(model, imp, target)
    assert LlmShape.of(pruned.config) == target
    assert sum(p.numel() for p in pruned.parameters()) == target.params()
    layer = pruned.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (4 * 8, 36) and layer.self_attn.k_proj.weight.shape == (2 * 8, 36)
    assert layer.mlp.down_proj.weight.shape == (36, 32)
    if tied:
        assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = batches(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, pruned(input_ids=ids).logits)


def test_pruning_nothing_gives_the_same_model(model_and_importance):
    model, imp = model_and_importance
    same = prune(model, imp, LlmShape.of(model.config))
    ids = batches(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(same(input_ids=ids).logits, model(input_ids=ids).logits)


def test_keeping_all_but_one_head_slices_the_right_columns(model_and_importance):
    """Width-only head pruning equals zeroing the dropped head's o_proj columns in the original."""
    model, imp = model_and_importance
    shape = LlmShape.of(model.config)
    pruned = prune(model, imp, shape.with_(heads=4))
    ref = tiny_llama()
    for i, layer in enumerate(ref.model.layers):
        kept = set(head_groups(imp.heads[i], 2, 4).tolist())
        for h in set(range(6)) - kept:
            layer.self_attn.o_proj.weight.data[:, h * 8 : (h + 1) * 8] = 0
    ids = batches(1)[0]
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_bad_targets_are_clear(model_and_importance):
    model, imp = model_and_importance
    shape = LlmShape.of(model.config)
    with pytest.raises(DistillError, match="between 1 and the teacher's 48"):
        prune(model, imp, shape.with_(hidden=64))
    with pytest.raises(DistillError, match="multiple of heads=4"):
        prune(model, imp, shape.with_(hidden=30, heads=4))
    with pytest.raises(DistillError, match="multiple of the 2 key/value heads"):
        prune(model, imp, shape.with_(heads=5))


def test_unsupported_architecture():
    from transformers import GPT2Config

    from distill.pruning import check_supported

    with pytest.raises(DistillError, match="not supported for pruning"):
        check_supported(GPT2Config(architectures=["GPT2LMHeadModel"]))
