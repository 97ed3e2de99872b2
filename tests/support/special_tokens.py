"""Special tokens of real chat models, as their tokenizers match them in text.

llama.cpp's server and HF tokenizers turn each of these strings, found anywhere in a
rendered prompt, into the control token itself, so none may reach the model inside a
recalled memory. The families the quoting is built on (a "<" before a non-space, a word
in square brackets) and some that test its edges (fullwidth bars, Falcon's ">>...<<",
CJK inside angle brackets).
"""

from __future__ import annotations

SPECIAL_TOKENS = (
    # ChatML: SmolLM2, Qwen 2/2.5/3, Yi, Phi-4, InternLM, DBRX
    "<|im_start|>", "<|im_end|>", "<|im_sep|>", "<|endoftext|>", "<|fim_prefix|>",
    "<tool_call>", "</tool_call>", "<think>", "</think>",
    # Llama 3 and 4
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|eom_id|>", "<|python_tag|>", "<|reserved_special_token_0|>",
    "<|header_start|>", "<|header_end|>", "<|eot|>",
    # Llama 2, Mistral (SentencePiece and Tekken), Mixtral
    "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
    "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[IMG_BREAK]", "[THINK]", "<SPECIAL_20>",
    # Gemma
    "<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
    # Phi-3, Zephyr, GLM-4 / ChatGLM
    "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "[gMASK]", "<sop>",
    # gpt-oss (harmony)
    "<|start|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>",
    # DeepSeek V2/V3/R1: fullwidth bars and U+2581
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    # Command-R / Aya, Granite, EXAONE, MiniCPM, Falcon, BERT-style
    "<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|END_OF_TURN_TOKEN|>",
    "<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>",
    "[|system|]", "[|user|]", "[|assistant|]", "[|endofturn|]",
    "<\u7528\u6237>", "<AI>",
    ">>TITLE<<", ">>QUESTION<<", ">>ANSWER<<",
    "[CLS]", "[SEP]", "[MASK]",
)  # fmt: skip
