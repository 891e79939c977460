"""Write a Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json) built
from a SentencePiece BPE .model file, without the sentencepiece package.

    python scripts/sentencepiece_to_tokenizer_json.py OUT_DIR [--model tokenizer.model] [--added-token "<image>" ...]

Without --model it converts the Mistral v0.1 model shipped by `mistral-common` (pip install --no-deps mistral-common).
Added tokens are special; pass a JSON object ('{"content": "<x>", "special": false, "lstrip": true}') for others.
"""

import argparse
import json
from pathlib import Path

from zamba2vl.processing.tokenizer import Tokenizer


def _default_model() -> Path:
    try:
        import mistral_common
    except ImportError as e:
        raise SystemExit("no --model given and mistral-common is not installed") from e
    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="SentencePiece .model file")
    parser.add_argument("--added-token", action="append", default=[], help="token string or JSON object")
    parser.add_argument("--image-token", default=None, help="record this as the tokenizer's image_token")
    args = parser.parse_args()

    added = [json.loads(t) if t.lstrip().startswith("{") else t for t in args.added_token]
    config = {"extra_special_tokens": {"image_token": args.image_token}} if args.image_token else None
    tokenizer = Tokenizer.from_sentencepiece(args.model or _default_model(), added, config)
    tokenizer.save_pretrained(args.out_dir)
    print(f"wrote {args.out_dir}: {tokenizer.vocab_size} pieces + {len(tokenizer) - tokenizer.vocab_size} added tokens")


if __name__ == "__main__":
    main()
