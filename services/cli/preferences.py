"""What the demo teaches and how it checks it (DESIGN.md §5.1): the built-in preferences (feedback text,
prompts, a verifier of answers, a decision-point signal), the control's feedback and the degeneration check."""

from __future__ import annotations

import re

from services.cli.eval.preferences import Preference, builtin

SYSTEM_PROMPT = "You are a helpful assistant."
#: The unrelated follow-up of the control run. Not the trainer's neutral follow-up ("By the way, what is
#: 27*4?"): with the contrastive baseline that text would cancel itself exactly and prove nothing.
CONTROL_FEEDBACK = "Thanks! Can you also tell me a joke about cats?"

#: Emoji code points, for the demo's token-level signal (the eval's verifier reads Unicode categories).
EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\U0001f000-\U0001f2ff]")


#: The built-in preferences (services/cli/eval/builtin/*.yaml), one source for `claas demo` and `claas eval`.
PREFERENCES: dict[str, Preference] = builtin()
IDENTITY = PREFERENCES["identity"]
CONCISE = PREFERENCES["concise"]
NO_EMOJI = PREFERENCES["no_emoji"]
