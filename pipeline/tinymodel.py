"""A tiny Llama-architecture model and tokenizer, built locally in about a second.

Why it exists: machines that build and test LLM4Sweat have no GPU and no model hub. The
tests, the benchmarks and the offline demo still have to run the real code paths (chat
template, LoRA training, adapter save/load, batched generation, hot swap), so we build a
model with the same architecture and the same chat-template conventions as the production
default (Llama-3.2-Instruct), just very small.

The head size is 32 (hidden 128 / 4 heads) because vLLM's CPU build refuses head sizes
below 32; the same directory can then be served by vLLM in the serving tests.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

BOS = "<|begin_of_text|>"
EOS_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, BOS, EOS_TEXT, START_HEADER, END_HEADER, EOT]

# Llama-3-style chat template (same token layout as Llama-3.2-Instruct, without the date
# header). ``add_generation_prompt`` opens an assistant turn for generation.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

VOCAB_SIZE = 1000
MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=2048,
)

# Words the tokenizer should always know, whatever the corpus: chat roles and common text.
_BASE_TEXT = [
    "system user assistant",
    "The quick brown fox jumps over the lazy dog. 0123456789 , . ; : ! ? ' \" ( ) - / %",
]


def build_tiny_model(out_dir: Path, corpus: Iterable[str], seed: int = 0, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train a byte-level BPE tokenizer on ``corpus``, build a random tiny Llama, save both.

    Deterministic for a given corpus and seed (same bytes on disk), so test failures are
    reproducible. Returns ``out_dir``. The model is saved in float32 safetensors together
    with its tokenizer (chat template included) and a generation config whose end token is
    ``<|eot_id|>``, like Llama-3.2-Instruct. A larger ``vocab_size`` makes most tokens whole
    words, so a model this small writes words rather than fragments (the demo uses it).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [t for t in corpus if t and t.strip()] + _BASE_TEXT

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Plain ``tokenizer(text)`` adds BOS, as Llama-3's tokenizer does; the chat template
    # writes BOS itself, so chat prompts are tokenized with add_special_tokens=False.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=bos_id,
        eos_token_id=eot_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
        **MODEL_SHAPE,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=[eot_id, tokenizer.convert_tokens_to_ids(EOS_TEXT)],
        pad_token_id=pad_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    logger.info("built tiny model (vocab %d) at %s", len(tokenizer), out_dir)
    return out_dir


# --- sample data for tests, benchmarks and a demo without a pack -----------------------------

_QUESTIONS = [
    ("My hands sweat so much that paper gets wet when I write. Is this normal?",
     "Heavy sweating of the hands that soaks paper may be primary focal hyperhidrosis. "
     "A doctor can confirm it; first options include clinical strength antiperspirant."),
    ("My feet are always wet and my shoes smell. What can I do?",
     "Plantar hyperhidrosis is common. Aluminium chloride antiperspirant at night, moisture "
     "wicking socks and rotating shoes help. See a dermatologist if it persists."),
    ("I sweat at night and lost weight without trying.",
     "Night sweats with weight loss need a medical check soon, because they can have a cause "
     "that should be treated. Please see a doctor."),
    ("I feel embarrassed to shake hands at work because of sweating.",
     "Many people with hyperhidrosis feel this way, and you are not alone. Treatments exist, "
     "and talking about it with a doctor or a support group can help."),
    ("Does botox work for underarm sweating?",
     "Botulinum toxin injections reduce underarm sweating for several months in most people. "
     "A dermatologist can tell you whether it suits you."),
    ("What is iontophoresis?",
     "Iontophoresis passes a mild electric current through water to reduce sweating of the "
     "hands and feet. Sessions are repeated a few times a week at first."),
]


def sample_conversations(n: int = 48, seed: int = 0, variant: str = "") -> list[list[dict[str, str]]]:
    """Small synthetic chat examples about hyperhidrosis, for tests and benchmarks.

    ``variant`` is appended to every answer, so two variants train two adapters that answer
    differently (the hot-swap tests need to tell them apart).
    """
    rng = random.Random(seed)
    convs = []
    for i in range(n):
        question, answer = _QUESTIONS[i % len(_QUESTIONS)]
        prefix = rng.choice(["", "Hello. ", "Hi, ", "Question: "])
        if variant:
            answer = f"{variant} {answer}"
        conv = [
            {"role": "system", "content": "You are a careful assistant for people with hyperhidrosis."},
            {"role": "user", "content": prefix + question},
            {"role": "assistant", "content": answer},
        ]
        convs.append(conv)
    return convs


def corpus_from_conversations(conversations: Iterable[list[dict[str, str]]]) -> list[str]:
    """The message texts of ``conversations``, for training the tokenizer."""
    return [m["content"] for conv in conversations for m in conv if m.get("content")]


def read_model_config(model_dir: Path) -> dict:
    """The saved config.json of a model directory (used to validate a built model)."""
    return json.loads((Path(model_dir) / "config.json").read_text())
