"""The chunked training loss equals the full-logits one (value and gradients) on every model shape we train,
and leaves no hook behind."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from families import build_family, family_model_class

from toolkit.lora import attach_lora
from toolkit.loss import IGNORE, output_head, token_loss_sum, token_loss_sum_full
from toolkit.recipe import LoraConfig

CHUNK = 5  # well below the target count of every batch here (18, 12), which is not a multiple of it


def padded_batch(vocab: int) -> dict:
    """Two right-padded rows, a prompt without loss at the start of each: 18 targets (11 + 7)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(vocab, 200), (2, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    ids[1, 10:] = 0
    labels = ids.clone()
    labels[mask == 0] = IGNORE
    labels[:, :3] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def packed_batch(vocab: int) -> dict:
    """Two sequences (6 and 8 tokens) packed in one row: position_ids and cu_seq_lens, no attention_mask."""
    ids = torch.randint(3, min(vocab, 200), (1, 14), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, [0, 6]] = IGNORE  # no loss on the first token of each sequence
    cu = torch.tensor([0, 6, 14], dtype=torch.int32)
    return {"input_ids": ids, "labels": labels, "position_ids": torch.cat([torch.arange(6), torch.arange(8)])[None],
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 8, "max_length_k": 8}


def loss_and_grads(model, batch, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def head_inputs(model):
    """Records the number of rows of every call of the model's output head."""
    rows = []
    handle = output_head(model).register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    return rows, handle


def assert_same_loss_and_grads(model, batch, chunk=CHUNK):
    model.eval()  # no dropout: both paths must see the same forward
    rows, handle = head_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the chunked path must not have fallen back
        chunked, chunked_grads = loss_and_grads(model, batch, lambda m, b: token_loss_sum(m, b, chunk_size=chunk))
    handle.remove()
    # the model's call and our check see the last position of each row; then every chunk runs in forward, and
    # all but the last again in backward (recomputed, not kept; the last chunk's backward comes first and uses
    # its kept logits)
    targets = int((batch["labels"][:, 1:] != IGNORE).sum())
    chunks = [min(chunk, targets - start) for start in range(0, targets, chunk)]
    assert rows == [len(batch["labels"])] * 2 + chunks + chunks[::-1][1:]
    full, full_grads = loss_and_grads(model, batch, token_loss_sum_full)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    assert chunked_grads.keys() == full_grads.keys() and full_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    return chunked_grads


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """GPT-2, Llama (tied embeddings) and the multimodal Qwen3.5 class (text path), built once."""
    tmp = tmp_path_factory.mktemp("loss-families")
    return {f: family_model_class(f).from_pretrained(build_family(f, tmp / f), dtype=torch.float32)
            for f in ("gpt2", "llama", "qwen3_5")}


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3_5"])
def test_chunked_equals_full_on_families(family_models, family):
    model = family_models[family]
    vocab = model.get_output_embeddings().out_features
    assert_same_loss_and_grads(model, padded_batch(vocab))
    assert_same_loss_and_grads(model, padded_batch(vocab), chunk=10_000)  # one chunk
    if family != "qwen3_5":  # GDN layers take packed rows only with flash-linear-attention (GPU)
        assert_same_loss_and_grads(model, packed_batch(vocab))


def test_chunked_equals_full_on_tiny_hybrid(tiny_model_and_tokenizer):
    model = tiny_model_and_tokenizer[0]
    assert_same_loss_and_grads(model, padded_batch(model.config.vocab_size))


def test_tied_embedding_gets_both_gradients(family_models):
    model = family_models["llama"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    grads = assert_same_loss_and_grads(model, padded_batch(model.config.vocab_size))
    unused_row = 250  # never an input id: its gradient comes through the head alone
    assert grads["model.embed_tokens.weight"][unused_row].abs().sum() > 0


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # LoRA on a tied lm_head: on purpose
def test_chunked_equals_full_with_lora(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = attach_lora(base, LoraConfig(r=4, alpha=8, targets=["hybrid-all", "lm_head"]))
    with torch.no_grad():  # non-zero B, so the adapters change the forward
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    assert "lora" in type(output_head(model)).__module__  # the head we hook is peft's wrapper around lm_head
    grads = assert_same_loss_and_grads(model, padded_batch(model.config.vocab_size))
    assert any("lm_head.lora_A" in n for n in grads) and all("lora_" in n for n in grads)


SMALL = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1)
POST_PROCESSED = {  # models whose logits are not the head's output, and one whose head has a bias
    "gemma2 softcap": lambda tf: tf.Gemma2ForCausalLM(tf.Gemma2Config(head_dim=16, final_logit_softcapping=0.05,
                                                                       **SMALL)),
    "cohere scale": lambda tf: tf.CohereForCausalLM(tf.CohereConfig(logit_scale=3.0, **SMALL)),
    "granite scaling": lambda tf: tf.GraniteForCausalLM(tf.GraniteConfig(logits_scaling=0.25, **SMALL)),
    "phi head bias": lambda tf: tf.PhiForCausalLM(tf.PhiConfig(**SMALL)),
}


@pytest.mark.parametrize("kind", POST_PROCESSED)
def test_post_processed_logits_and_head_bias(kind):
    import transformers as tf

    torch.manual_seed(0)
    model = POST_PROCESSED[kind](tf)
    grads = assert_same_loss_and_grads(model, padded_batch(300))
    assert ("lm_head.bias" in grads) == (kind == "phi head bias")


class Doubled(torch.nn.Module):
    """A model that post-processes its head's output in a way the chunked loss cannot know."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        return SimpleNamespace(logits=self.inner(**kwargs).logits * 2)


def test_unknown_post_processing_falls_back_to_full(family_models):
    model, batch = Doubled(family_models["llama"]), padded_batch(300)
    with pytest.warns(UserWarning, match="used full logits"):
        loss = token_loss_sum(model, batch)
    torch.testing.assert_close(loss, token_loss_sum_full(model, batch))


def test_hook_is_removed_after_the_call_and_after_an_exception(family_models):
    model = family_models["gpt2"]
    head = output_head(model)
    batch = padded_batch(model.config.vocab_size)
    token_loss_sum(model, batch)
    assert not head._forward_pre_hooks
    assert model(input_ids=batch["input_ids"]).logits.shape == (2, 14, model.config.vocab_size)

    bad = dict(batch, input_ids=batch["input_ids"] + 10**6)  # out of the vocabulary: the forward raises
    with pytest.raises(IndexError), warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's own error, not a warning about the hook
        token_loss_sum(model, bad)
    assert not head._forward_pre_hooks
    assert model(input_ids=batch["input_ids"]).logits.shape == (2, 14, model.config.vocab_size)


def test_no_grad_and_no_targets(family_models):
    model = family_models["llama"]
    batch = padded_batch(300)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(token_loss_sum(model, batch, chunk_size=CHUNK), token_loss_sum_full(model, batch))
    empty = dict(batch, labels=torch.full_like(batch["labels"], IGNORE))
    loss = token_loss_sum(model, empty)
    loss.backward()  # a graph even without targets (the loop always calls backward)
    assert loss.item() == 0.0
