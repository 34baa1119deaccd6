"""The one message for pretrained files that are not available offline (tokenizers, encoders, backbones share it)."""
from __future__ import annotations


def hf_offline_help(name_or_path: str, what: str) -> str:
    return (
        f"Could not load the {what} {name_or_path!r} from a local folder or the Hugging Face cache.\n"
        "To provide it without internet access, either\n"
        f"  * on a connected machine run `hf download {name_or_path}` (or from_pretrained once) and copy the\n"
        "    Hugging Face cache ($HF_HOME, default ~/.cache/huggingface) to this machine, or\n"
        "  * pass a local folder containing config.json, the weights and the tokenizer files (save_pretrained output).\n"
        "Set HF_HUB_OFFLINE=1 so nothing tries the network."
        + (" For a randomly initialised model use pretrained=False." if what != "tokenizer" else "")
    )
