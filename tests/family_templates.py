"""Chat templates and tokenizers shaped like the model families the toolkit meets (a helper, not tests).

The templates are written for the tests; each reproduces the structure of its family's official template
that matters for prompts and loss masks:

- QWEN35 (Qwen3.5): contents `|trim`med; the system message must come first; assistant turns after the last
  user message get a think block `<think>\\n{reasoning}\\n</think>\\n\\n` (empty reasoning: the empty block
  `<think>\\n\\n</think>\\n\\n`), earlier turns lose theirs; `reasoning_content` or an inline
  `<think>...</think>` in the content is the reasoning; the generation prompt ends `<think>\\n`, or
  `<think>\\n\\n</think>\\n\\n` with `enable_thinking=False`.
- QWEN3 (Qwen3): contents as given; after the last user message the final turn (or one with reasoning)
  gets the think block, reasoning `strip('\\n')`ed; the generation prompt is `<|im_start|>assistant\\n`, plus
  the empty think block with `enable_thinking=False`.
- LLAMA3 (Llama-3.1/3.2): writes BOS itself; always a system header with the knowledge cutoff and a
  date (`date_string`), the system message folded into it; `<|start_header_id|>role<|end_header_id|>\\n\\n`
  + content `|trim` + `<|eot_id|>`.
- MISTRAL (Mistral-7B-Instruct v0.2/v0.3 style): BOS in the template; a system message is prepended to the
  first user message; `[INST] ... [/INST]`, then ` ` + reply + `</s>`; roles must alternate.
- GEMMA (Gemma 3 style): BOS in the template; no system role: its text opens the first user turn;
  `<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n`; roles must alternate (raises).
- GPT2: no template at all (None).

`build_tokenizer(family, texts=None)` trains a small byte-level BPE (about 500 tokens) locally with
`tokenizers`, with the family's special tokens and bos/eos/pad as the real tokenizer sets them: the Llama-3,
Mistral and Gemma tokenizers add BOS when `add_special_tokens=True`; Qwen and GPT-2 add nothing. The trained
tokenizer is cached per (family, texts), so building one again is cheap; every call returns a fresh object.
"""

from __future__ import annotations

from functools import cache

FAMILIES = ("qwen3_5", "qwen3", "llama3", "mistral", "gemma", "gpt2")

_QWEN_REASONING = (
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}"
    "{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
)

QWEN35 = (
    "{%- if not messages %}{{- raise_exception('No messages provided.') }}{%- endif %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content|trim + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1, found=false) %}"
    "{%- for message in messages[::-1] %}"
    "{%- if not ns.found and message.role == 'user' %}"
    "{%- set ns.last_query_index = (messages|length - 1) - loop.index0 %}{%- set ns.found = true %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content|trim %}"
    "{%- if message.role == 'system' %}"
    "{%- if not loop.first %}{{- raise_exception('System message must be at the beginning.') }}{%- endif %}"
    "{%- elif message.role == 'user' %}"
    "{{- '<|im_start|>user\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    + _QWEN_REASONING +
    "{%- set reasoning_content = reasoning_content|trim %}"
    "{%- if loop.index0 > ns.last_query_index %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content + '\\n</think>\\n\\n' + content }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- raise_exception('Unexpected message role.') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}"
    "{%- endif %}"
)

QWEN3 = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- if ns.multi_step_tool and message.role == 'user' %}"
    "{%- set ns.multi_step_tool = false %}"
    "{%- set ns.last_query_index = (messages|length - 1) - loop.index0 %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    + _QWEN_REASONING +
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

LLAMA3 = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content']|trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content']|trim + eos_token }}"
    "{%- else %}"
    "{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial "
    "optional system message!') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

GEMMA = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{%- set role = 'model' %}{%- else %}{%- set role = message['role'] %}"
    "{%- endif %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{- message['content']|trim }}"
    "{{- '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

GPT2 = None

TEMPLATES = {"qwen3_5": QWEN35, "qwen3": QWEN3, "llama3": LLAMA3, "mistral": MISTRAL, "gemma": GEMMA, "gpt2": GPT2}

# The text that closes an assistant reply in each family (the plain format's is GPT-2's EOS).
END_OF_TURN = {"qwen3_5": "<|im_end|>", "qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>",
               "gemma": "<end_of_turn>", "gpt2": "<|endoftext|>"}

# Each family's tokens: (special tokens in id order, non-special added tokens, bos, eos, pad, unk,
# whether add_special_tokens=True prepends BOS, pre-tokenizer regex: "llama3" (Qwen2/Llama-3 split) or None
# (GPT-2's byte-level regex)).
_SPECS = {
    "qwen3_5": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ["<think>", "</think>"],
                None, "<|im_end|>", "<|endoftext|>", None, False, "llama3"),
    "qwen3": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ["<think>", "</think>"],
              None, "<|im_end|>", "<|endoftext|>", None, False, "llama3"),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], [],
               "<|begin_of_text|>", "<|eot_id|>", None, None, True, "llama3"),
    "mistral": (["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], [], "<s>", "</s>", None, "<unk>", True, None),
    "gemma": (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], [],
              "<bos>", "<eos>", "<pad>", "<unk>", True, None),
    "gpt2": (["<|endoftext|>"], [], "<|endoftext|>", "<|endoftext|>", None, "<|endoftext|>", False, None),
}

# The split pattern of the Qwen2/Qwen3 and Llama-3 tokenizers (whitespace runs with newlines are one piece).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

_WORDS = ("the quick brown fox jumps over lazy dog while cat sleeps user asked for item assistant answered with "
          "care and did what was asked think first then answer question short reply hello there how are you today "
          "be brief please give me a list of three colors red green blue yellow system message model turn each "
          "line number story about river mountain forest city morning evening night friend teacher student book "
          "write read learn train test small large happy quiet careful simple clear good better best").split()

DEFAULT_TEXTS = [
    f"Line {i}: " + " ".join(_WORDS[(i * 7 + k * 3) % len(_WORDS)] for k in range(24)) + ".\n\n"
    + " ".join(_WORDS[(i * 5 + k) % len(_WORDS)] for k in range(16)).capitalize() + "?\n"
    + f"Item {i % 10}, {i * 13 % 100}; answer: " + " ".join(_WORDS[(i + k * 11) % len(_WORDS)] for k in range(12))
    + ("\n\n" if i % 2 else "\n")
    for i in range(200)
]

VOCAB_SIZE = 512


@cache
def _trained(family: str, texts: tuple[str, ...]) -> str:
    """The trained `tokenizers.Tokenizer` of a family, as JSON (built once per family and corpus)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special, added, bos, _, _, _, adds_bos, split = _SPECS[family]
    bpe = Tokenizer(models.BPE())
    if split == "llama3":
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=special, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(texts), trainer=trainer)
    if added:
        bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    steps = [processors.ByteLevel(trim_offsets=False)]
    if adds_bos:
        steps.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                   special_tokens=[(bos, bpe.token_to_id(bos))]))
    bpe.post_processor = processors.Sequence(steps)
    return bpe.to_str()


def build_tokenizer(family: str, texts=None):
    """A fast tokenizer shaped like `family`'s (one of FAMILIES), with its chat template set (None for gpt2)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if family not in _SPECS:
        raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
    texts = tuple(DEFAULT_TEXTS if texts is None else texts)
    _, _, bos, eos, pad, unk, _, _ = _SPECS[family]
    tokens = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad), ("unk_token", unk)) if v}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained(family, texts)),
                                        name_or_path=f"tiny-{family}", **tokens)
    tokenizer.chat_template = TEMPLATES[family]
    return tokenizer
