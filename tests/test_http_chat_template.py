"""The HTTP API's chat template: a tokenizer's own template gives the token ids `apply_chat_template` gives,
without torch in the process; the bundled models' plain template otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from adaspec.http.chat_template import ChatTemplate, plain_prompt
from adaspec.http.errors import ApiError
from tests.conftest import BUNDLED_TARGET

# A template in the style of the Hub's: its own BOS, roles checked with raise_exception, a generation prompt.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m['role']) }}"
    "{% endif %}<|{{ m['role'] }}|>\n{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MESSAGES = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": " def add(a, b): "}]


def write_templated_tokenizer(directory: Path, *, as_file: bool = False) -> Path:
    """The bundled tokenizer with TEMPLATE, in tokenizer_config.json or (`as_file`) in chat_template.jinja."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUNDLED_TARGET / "tokenizer.json", directory / "tokenizer.json")
    config = json.loads((BUNDLED_TARGET / "tokenizer_config.json").read_text())
    if as_file:
        (directory / "chat_template.jinja").write_text(TEMPLATE)
    else:
        config["chat_template"] = TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("as_file", [False, True])
def test_a_tokenizer_template_gives_apply_chat_templates_token_ids(tmp_path, as_file):
    directory = write_templated_tokenizer(tmp_path / "tok", as_file=as_file)
    expected = AutoTokenizer.from_pretrained(directory).apply_chat_template(MESSAGES, add_generation_prompt=True,
                                                                           tokenize=True, return_dict=False)
    rendered = ChatTemplate.load(directory).render(MESSAGES)
    assert rendered == list(expected)
    assert rendered.count(0) == 3  # the template's own BOS and two EOS: no second BOS from the tokenizer


def test_a_template_refusing_the_messages_is_a_400_naming_messages(tmp_path):
    template = ChatTemplate.load(write_templated_tokenizer(tmp_path / "tok"))
    with pytest.raises(ApiError) as caught:
        template.render([{"role": "tool", "content": "42"}])
    assert (caught.value.status, caught.value.param) == (400, "messages")
    assert "unknown role tool" in caught.value.message


def test_the_bundled_tokenizer_has_no_template_so_the_plain_one_applies():
    template = ChatTemplate.load(BUNDLED_TARGET)
    assert template.kind == "plain"
    assert template.render(MESSAGES) == plain_prompt(MESSAGES) == \
        "system: You write Python.\nuser:  def add(a, b): \nassistant: "


def test_the_http_process_never_imports_torch(tmp_path):
    directory = write_templated_tokenizer(tmp_path / "tok")
    code = ("import sys; import adaspec.http.app, adaspec.http.main, adaspec.http.server; "
            "from adaspec.http.chat_template import ChatTemplate; "
            f"ChatTemplate.load({str(directory)!r}).render([{{'role': 'user', 'content': 'hi'}}]); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "False", result.stderr
