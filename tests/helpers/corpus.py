"""An English corpus built to break a tokenizer (punctuation, digits, accents, scripts, emoji, HTML
entities, mojibake, control characters, odd whitespace, contractions in any case, literal special
tokens, texts past the context): the CLIP and BERT tokenizer equality tests run on it."""

from __future__ import annotations

import random

from datamodules.shapesworld import captions as lang
from datamodules.shapesworld.world import sample_scene

TRICKY = [
    "", " ", "\n\n", "a", "!", "!!!", "a photo of a dog.", "A Photo Of A DOG!", "hello!world", "what?! no way!!!",
    "a red square ! a blue circle", "!a!b!", "1", "123", "3.14159", "1,000,000 dollars", "2024-05-01 12:30:00",
    "phone: +1 (555) 010-9999", "v2.0.1-rc3", "e=mc^2", "50% off", "#hashtag @user", "http://example.com/a?b=c&d=e",
    "it's", "IT'S", "It'S", "don't", "DON'T", "we'll", "they're", "I'm", "you've", "he'd", "'s", "''s", "'ſ", "rock'n'roll",
    "café", "CAFÉ", "naïve résumé", "Ångström", "straße", "İstanbul", "ﬁne ﬂower", "ＡＢＣ ｆｕｌｌ width", "cafÃ©",
    "“curly quotes” and ‘single’", "em—dash – en-dash … ellipsis", "日本語のテキスト", "中文 测试", "한국어", "Привет, мир",
    "مرحبا بالعالم", "שלום", "ελληνικά", "हिन्दी", "ไทย", "🐶🐱", "a 🐶 on a 🛹", "👩‍👩‍👧‍👦 family", "🇫🇷 flag", "✓ ✗ ★",
    "&amp;", "Tom &amp; Jerry", "&amp;amp; twice", "&amp;amp;amp; thrice", "&lt;b&gt;bold&lt;/b&gt;", "&quot;q&quot; &#39;a&#39;",
    "&#x1F436; dog", "&nbsp;space", "<b>tags</b> & <i>more</i>", "a & b", "x&y", "AT&T",
    "multiple   spaces", "tabs\tand\ttabs", "new\nlines\r\nand\rreturns", "  leading and trailing  ", "no\u00a0break\u3000ideographic",
    "zero\u200bwidth", "soft\u00adhyphen", "line\u2028separator", "ctrl\x00\x07chars\x7f", "\x1b[31mred\x1b[0m", "vertical\x0bfeed\x0c",
    "<start_of_text>", "<end_of_text>", "a <end_of_text> b", "x!<end_of_text>", "x<start_of_text>y", "<START_OF_TEXT> upper", "_of_text>",
    "a\u0301 combining", "Ω ohm Ω", "Kelvin K", "Ⅻ roman", "½ ¼ ¾", "x² y³", "١٢٣ arabic digits", "௧௨ tamil digits",
    "a" * 300, "word " * 100, "!" * 100, "supercalifragilisticexpialidocious antidisestablishmentarianism",
]  # fmt: skip

FRAGMENTS = [
    "a", "the", "dog", "Cat", "RED", "square", "left of", "circle", "photo", "!", "?", ".", ",", "...", "'s", "n't", "'LL",
    "42", "7", "3.5", "1,024", "é", "ü", "ß", "Ä", "ñ", "ø", "日本", "🐶", "🚀", "❤️", "&amp;", "&lt;", "&#233;", "&", "(", ")",
    "[x]", "{y}", "-", "_", "/", "\\", "#", "@", "$", "%", "^", "*", "+", "=", "~", "`", "|", ";", ":", '"', "\u00a0", "\t", "\n",
    "  ", "Ã©", "—", "“", "”", "’", "\u200d", "<end_of_text>", "<", ">",
]  # fmt: skip


def corpus() -> list[str]:
    rng = random.Random(0)
    shapes = [lang.caption(sample_scene(rng, 64, rng.randint(1, 4)), rng) for _ in range(150)]
    shapes += [text.upper() for text in shapes[:20]] + [f"{text}!" for text in shapes[20:40]]
    mixed = []
    for _ in range(300):
        pieces = rng.choices(FRAGMENTS, k=rng.randint(1, 40))
        mixed.append("".join(p + rng.choice(["", " ", " ", "  "]) for p in pieces))
    long = [" ".join(rng.choices(FRAGMENTS[:30], k=200)) for _ in range(10)]
    return TRICKY + shapes + mixed + long
