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


def test_channel_and_block_importance_by_hand():
    """Channels: batch-L2 of each sequence's mean |output| of every RMSNorm that feeds a layer (both norms
    of each layer count); block: mean over sequences and positions of 1 - cos(layer input, layer output)."""
    model = tiny_llama(layers=2)
    ids = batches(1)[0]
    norms, ios = [], []
    hooks = [m.register_forward_hook(lambda m, a, out: norms.append(out)) for layer in model.model.layers
             for m in (layer.input_layernorm, layer.post_attention_layernorm)]  # fmt: skip

    def io(m, a, kw, out):
        ios.append((a[0] if a else kw["hidden_states"], out[0] if isinstance(out, tuple) else out))

    hooks += [layer.register_forward_hook(io, with_kwargs=True) for layer in model.model.layers]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    channels = torch.stack([o.abs().mean(1) for o in norms]).pow(2).sum((0, 1)).sqrt()
    block = torch.tensor([(1 - torch.nn.functional.cosine_similarity(x, y, dim=-1)).mean().item() for x, y in ios])
    imp = compute_importance(model, [ids], depth_batches=1, progress=False)
    torch.testing.assert_close(imp.embedding, channels)
    torch.testing.assert_close(imp.block, block)
    # the LM-loss depth score: the loss with the layer passed through, minus the loss with it
    with torch.no_grad():
        base = model(input_ids=ids, labels=ids).loss
        skip = model.model.layers[0].register_forward_hook(lambda m, a, kw, out: a[0] if a else kw["hidden_states"],
                                                          with_kwargs=True)  # fmt: skip
        without_first = model(input_ids=ids, labels=ids).loss
        skip.remove()
    assert imp.layer_drop_loss[0].item() == pytest.approx((without_first - base).item(), rel=1e-5)


def test_hidden_pruning_keeps_the_top_channels_of_every_tensor(model_and_importance):
    model, imp = model_and_importance
    kept = torch.topk(imp.embedding, 42).indices.sort().values
    pruned = prune(model, imp, LlmShape.of(model.config).with_(hidden=42))
    torch.testing.assert_close(pruned.model.embed_tokens.weight, model.model.embed_tokens.weight[:, kept])
    torch.testing.assert_close(pruned.model.norm.weight, model.model.norm.weight[kept])
    for new, old in zip(pruned.model.layers, model.model.layers):
        torch.testing.assert_close(new.self_attn.q_proj.weight, old.self_attn.q_proj.weight[:, kept])
        torch.testing.assert_close(new.self_attn.o_proj.weight, old.self_attn.o_proj.weight[kept])
        torch.testing.assert_close(new.mlp.up_proj.weight, old.mlp.up_proj.weight[:, kept])
        torch.testing.assert_close(new.mlp.down_proj.weight, old.mlp.down_proj.weight[kept])
        torch.testing.assert_close(new.input_layernorm.weight, old.input_layernorm.weight[kept])


@pytest.mark.parametrize("metric", ["lm_loss", "block"])
def test_depth_pruning_equals_passing_the_least_important_layer_through(model_and_importance, metric):
    model, imp = model_and_importance
    scores = imp.layer_drop_loss if metric == "lm_loss" else imp.block
    dropped = int(scores.argmin())
    pruned = prune(model, imp, LlmShape.of(model.config).with_(layers=2), depth_metric=metric)
    ids = batches(1)[0]
    with torch.no_grad():
        skip = model.model.layers[dropped].register_forward_hook(
            lambda m, a, kw, out: a[0] if a else kw["hidden_states"], with_kwargs=True
        )
        expected = model(input_ids=ids).logits
        skip.remove()
        torch.testing.assert_close(pruned(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)


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


def test_importance_without_layer_drop_scores_prunes_width_only():
    model = tiny_llama()
    imp = compute_importance(model, batches(1), depth_batches=0, progress=False)
    assert imp.layer_drop_loss.isnan().all() and (imp.block > 0).all()
    shape = LlmShape.of(model.config)
    narrow = prune(model, imp, shape.with_(ffn=24))
    assert narrow.config.num_hidden_layers == 3 and narrow.config.intermediate_size == 24
    with pytest.raises(DistillError, match="depth_batches > 0"):
        prune(model, imp, shape.with_(layers=2))
    assert prune(model, imp, shape.with_(layers=2), "block").config.num_hidden_layers == 2
