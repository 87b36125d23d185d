"""A tiny random-weight Llama model with a ChatML tokenizer, built in a few seconds.

Hidden size 128, 2 layers, head dim 64 (vLLM's CPU attention rejects small head dims such as 16),
a byte-level BPE tokenizer of ~600 tokens trained on a small corpus with ``tokenizers``, and
SmolLM2-Instruct's chat template. Special token ids match SmolLM2's: ``<|endoftext|>`` 0,
``<|im_start|>`` 1, ``<|im_end|>`` 2 (eos).
"""

from __future__ import annotations

from pathlib import Path

#: SmolLM2-Instruct's chat template (ChatML with a default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
TINY_MAX_LEN = 1024

_CORPUS = [
    "Is the title related to the history of Europe? Answer YES or NO.",
    "The Battle of Waterloo was fought in 1815 near Brussels.",
    "Banana bread is a sweet quick bread made with ripe bananas.",
    'Return JSON like {"place": "Paris", "year": 1919, "tags": ["treaty", "war"]}.',
    "positive negative neutral YES NO true false null 0123456789 , : [ ] { } \" ' ",
    "The quick brown fox jumps over the lazy dog. Summarize the text in five words.",
]


def build_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Llama model with a ChatML tokenizer to ``folder`` (a few seconds)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        model_max_length=TINY_MAX_LEN,
    )
    hf_tok.chat_template = CHATML_TEMPLATE

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention rejects small head dims (16)
        num_key_value_heads=1,
        max_position_embeddings=TINY_MAX_LEN,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder
