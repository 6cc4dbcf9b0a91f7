"""The Ollama Modelfile's chat template follows the chat format of the tokenizer's Jinja
template, one row per format."""

from __future__ import annotations

import pytest

from scratchlm.export.ollama import modelfile

# the turn markers of each family's published template (a line of each)
TEMPLATES = {
    "chatml": ("{{ '<|im_start|>' + message['role'] }}", "<|im_start|>assistant\n",
               "<|im_end|>"),
    "gemma": ("{{ '<start_of_turn>' + role }}", "<start_of_turn>model\n", "<end_of_turn>"),
    "gemma4": ("{{- '<|turn>' + role + '\\n' -}}", "<|turn>model\n<|channel>thought\n<channel|>",
               "<turn|>"),
    "llama3": ("{{ '<|start_header_id|>' + message['role'] }}",
               "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
}


@pytest.mark.parametrize("kind", list(TEMPLATES))
def test_each_chat_format_gets_its_template_and_stop(kind):
    jinja, prompt_end, stop = TEMPLATES[kind]
    text = modelfile("m.gguf", jinja, eos_token="<eos>")
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template.endswith(prompt_end)
    assert f'PARAMETER stop "{stop}"' in text and 'PARAMETER stop "<eos>"' in text


def test_no_template_is_a_completion():
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile("m.gguf", None, eos_token=None)
