"""Chat messages → one prompt: the target tokenizer's chat template where it has one, else a plain template.

The tokenizer's template (`chat_template.jinja` beside the tokenizer, or `chat_template` in
`tokenizer_config.json`) is rendered by transformers' own renderer (`render_jinja_template`: the sandboxed
Jinja environment, filters and globals that `apply_chat_template` uses), with the tokenizer's special tokens
as variables and the generation prompt added. The text is then tokenised here with the `tokenizers` library
and no special tokens added, and the token ids are sent: a template writes its own BOS, and tokenising its
text again with special tokens would add a second one. Not `transformers.AutoTokenizer`: it imports torch,
which this process has no use for (about a second and hundreds of MB); `transformers.utils` and `tokenizers`
do not.

The bundled models have no template (they are trained on Python source, not on chats), so the plain template
applies: each message as `"{role}: {content}\n"`, then `"assistant: "`. That text is sent as a string prompt,
tokenised by the coordinator like a completion's prompt, so a chat request and a completion of the rendered
text give the same output.
"""

from __future__ import annotations

import json
from pathlib import Path

from adaspec.http.errors import invalid

GENERATION_PROMPT = "assistant: "
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """The plain template: `"{role}: {content}\n"` per message, then `"assistant: "`."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + GENERATION_PROMPT


class ChatTemplate:
    """Renders a conversation into a prompt for the coordinator (a string, or token ids)."""

    def __init__(self, template: str | None = None, special_tokens: dict[str, str] | None = None,
                 tokenizer_file: Path | None = None) -> None:
        self.template = template
        self.special_tokens = dict(special_tokens or {})
        self._tokenizer = self._render = None
        if template is not None:  # imported here: a process without a template (the bundled pair) needs neither
            from tokenizers import Tokenizer
            from transformers.utils.chat_template_utils import render_jinja_template

            if tokenizer_file is None or not tokenizer_file.is_file():
                raise FileNotFoundError(f"a chat template needs the tokenizer's tokenizer.json, not found at "
                                        f"{tokenizer_file}")
            self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
            self._render = render_jinja_template

    @property
    def kind(self) -> str:
        return "tokenizer" if self.template is not None else "plain"

    @classmethod
    def load(cls, directory: str | Path) -> ChatTemplate:
        """The template of the tokenizer in `directory` (a Hugging Face checkpoint or tokenizer directory)."""
        directory = Path(directory)
        config_path = directory / "tokenizer_config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no tokenizer_config.json in {directory}")
        config = json.loads(config_path.read_text())
        jinja_file = directory / "chat_template.jinja"
        template = jinja_file.read_text() if jinja_file.is_file() else config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one, as transformers picks
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        special = {name: _token_text(config[name]) for name in _SPECIAL_TOKENS if config.get(name) is not None}
        return cls(template or None, special, directory / "tokenizer.json")

    def render(self, messages: list[dict[str, str]]) -> str | list[int]:
        """The prompt for `messages`: the plain template's text, or the tokenizer template's token ids."""
        if self.template is None:
            return plain_prompt(messages)
        from jinja2 import TemplateError

        try:
            rendered, _ = self._render([messages], chat_template=self.template, add_generation_prompt=True,
                                                **self.special_tokens)
        except TemplateError as error:  # e.g. the template's raise_exception("roles must alternate ...")
            raise invalid(f"messages: the chat template refused them: {error}", "messages") from error
        return self._tokenizer.encode(rendered[0], add_special_tokens=False).ids


def _token_text(token: str | dict) -> str:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with `content`."""
    return token["content"] if isinstance(token, dict) else token
