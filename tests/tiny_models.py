"""Tiny causal and seq2seq models with real tokenizers, built offline in a second or two.

They are random-weight Llama and T5 models small enough for CPU tests; the tokenizer is a
byte-level BPE trained on a few sentences so any text round-trips.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Hello! How are you today? I am fine, thank you.",
    "Write a tweet about advice for entrepreneurs and small business owners.",
    "Summarize the following conversation. #Person1#: Hi #Person2#: Hello",
    "I am a student. During my experience as a data science intern my goals are to learn.",
    "Continue this text: the fans were angry and loud but the game went on.",
    "Bio: nurse who loves sailing. Interests: jazz, podcasts. Write one conversation starter.",
] * 20

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|endoftext|>",
        unk_token="<unk>", additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_causal_lm(out: Path, *, seed: int = 0, chat_template: bool = True) -> Path:
    """Save a ~100k-parameter Llama with its tokenizer into `out` and return `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_seq2seq(out: Path, *, seed: int = 0) -> Path:
    """Save a tiny T5 with its tokenizer into `out` and return `out`."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
