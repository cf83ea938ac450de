"""Text hidden by an encoding, decoded so the safety rules can read it.

A message can carry an instruction (or a crisis) the rules only see as opaque tokens: base64,
hex, binary, URL-encoding, HTML or ``U+`` escapes, Morse, rot13, reversed text, leetspeak,
spaced-out letters ("i g n o r e"), fullwidth or homoglyph letters and zero-width characters.
:func:`find_encoded` returns the decoded texts; :mod:`bot.safety.rules` runs the injection
rules on them, and the triage can run the crisis rules on them too.

Every check is strict, because ordinary messages are full of things that look encoded (hashes,
tracking numbers, lab values, URLs, image data URIs, code):

* a base64 / hex / binary token counts only if it decodes to readable UTF-8 text with letters;
* rot13 only when the decoded words are far more word-like (common words of 11 Latin-script
  languages) than the original ones;
* reversed text only when the message asks for it ("read this backwards", in 20 languages) or
  when the reversed words are far more word-like than the original ones;
* the work per message is capped (:data:`MAX_CHARS`, :data:`MAX_BLOBS`, :data:`MAX_SEGMENTS`),
  so a 4,000-character message costs well under 2 ms.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

MAX_CHARS = 8000  # only the first 8,000 characters are examined (a Discord message holds 4,000)
MAX_BLOBS = 8  # encoded tokens decoded per message
MAX_TRIES = 64  # candidate tokens tried per message
MAX_BLOB_CHARS = 4096  # longer tokens (an image data URI) are not decoded
MAX_SEGMENTS = 24  # segments tried for rot13 / reversed text


@dataclass(frozen=True)
class Decoded:
    """One decoded text: ``kind`` names the encoding; ``blob`` is True for a self-contained
    encoded token (base64, hex, …) rather than a transform of the words of the message."""

    kind: str
    text: str
    blob: bool = False


# --------------------------------------------------------------------------------------------
# What the message asks for: decoding (with a named encoding or a "read it backwards"), and
# doing what the decoded text says. Written per language, not from any corpus.

_DECODE_HINT = re.compile(
    r"\b(?:base\s?-?64|b64|hex(?:adecimal)?|rot\s?-?13|caesar|binary|morse|url-?encod\w*|unicode|ascii|cipher|"
    r"de-?cod\w*|decipher\w*|decrypt\w*|unscrambl\w*|d[ée]cod\w*|d[ée]chiffr\w*|decodific\w*|descodific\w*|descifr\w*|"
    r"dekodier\w*|entschl[üu]ssel\w*|decodeer\w*|ontcijfer\w*|avkoda\w*|dekoda\w*|dekod\w*|odkoduj\w*|zdekoduj\w*|"
    r"odszyfruj\w*|[çc][öo]z(?:\s|$)|[çc][öo]z[üu]n|[şs]ifreyi|giải\s+mã|decifr\w*)"
    r"|(?:расшифру\w*|раскодиру\w*|декодиру\w*|декоду\w*|розшифру\w*|розкоду\w*|αποκωδικοποί\w*|αποκρυπτογράφ\w*|"
    r"פענח\w*|תפענח\w*|תתרגם\s+מ|فك\s+(?:ال)?(?:تشفير|ترميز|شفرة)|فك\s+هذا|رمزگشایی|دیکو?د|डिकोड|ডিকোড|"
    r"解码|解碼|译码|デコード|復号|디코딩|디코드|해독|ถอดรหัส)",
    re.IGNORECASE,
)
_REVERSE_HINT = re.compile(
    r"\b(?:backwards?|back\s+to\s+front|in\s+reverse|reversed\s+text|reverse\s+(?:this|it|that|the\s+(?:text|string|message|letters|following))|"
    r"(?:read|write|spell)\w*\s+(?:it\s+|this\s+|that\s+)?(?:from\s+)?(?:right\s+to\s+left|the\s+other\s+way)|"
    r"al\s+rev[ée]s|[àa]\s+l'envers|r[üu]ckw[äa]rts|achterstevoren|al\s+contrario|ao\s+contr[áa]rio|de\s+tr[áa]s\s+para\s+(?:a\s+)?frente|"
    r"od\s+ty[łl]u|baklänges|tersten|(?:đọc|viết)\s+ngược|terbalik)"
    r"|(?:наоборот|задом\s+наперед|задом\s+наперёд|навпаки|ανάποδα|αντίστροφα|הפוך|מהסוף|بالعكس|معكوس|برعکس|وارونه|"
    r"उल्टा|उलटा|উল্টো\s+করে|倒过来|倒著|倒着|反过来|反過來|逆から|逆さ|거꾸로|กลับหลัง)",
    re.IGNORECASE,
)
_ROT13_HINT = re.compile(r"\b(?:rot\s?-?13|caesar|cipher)\b", re.IGNORECASE)
# Substrings one of which each hint needs: a cheap test before the slower pattern runs.
_ROT13_KEYS = ("rot", "caesar", "cipher")
_REVERSE_KEYS = (
    "backward", "reverse", "right to left", "other way", "back to front", "revés", "reves", "envers", "rückwärts",
    "ruckwarts", "achterstevoren", "contrario", "contrário", "trás para", "tras para", "od tył", "od tyl", "baklänges",
    "tersten", "ngược", "terbalik", "наоборот", "напер", "навпаки", "ανάποδα", "αντίστροφα", "הפוך", "מהסוף",
    "بالعكس", "معكوس", "برعکس", "وارونه", "उल्टा", "उलटा", "উল্টো করে", "倒过", "倒着", "倒著", "反过来", "反過來", "逆から",
    "逆さ", "거꾸로", "กลับหลัง",
)
_ACROSTIC_KEYS = (
    "first letter", "initial letter", "initials", "acrostic", "primera letra", "primeras letras", "premi", "buchstab",
    "prima lettera", "prime lettere", "primeira", "eerste letter", "pierwsz", "ilk harf", "букв", "літер", "首字母",
    "頭文字", "글자", "ตัวแรก",
)


def _hinted(low: str, keys: tuple[str, ...], pattern: re.Pattern[str]) -> bool:
    return any(key in low for key in keys) and bool(pattern.search(low))
_EXECUTE_HINT = re.compile(
    r"\b(?:do\s+(?:what\s+it\s+(?:says|asks)|it|that|this|as\s+it\s+says)|follow(?:\s+it|\s+them|\s+that|\s+this)?|obey|comply|execute|"
    r"run\s+(?:it|this)|act\s+on\s+it|carry\s+(?:it\s+)?out|you\s+know\s+what\s+to\s+do|"
    r"haz(?:lo)?|hazlo|obedece|ejecuta\w*|s[íi]gue(?:lo)?|cumple|ex[ée]cute\w*|applique\w*|suis|ob[ée]is|fais(?:-le)?|"
    r"ausf[üu]hr\w*|f[üu]hre\s+\w+\s+aus|befolg\w*|mach(?:\s+es|'s)|halte\s+dich|voer\s+\w*\s*uit|volg|esegui\w*|segui|obbedisci|fallo|"
    r"fa[çc]a|faz|siga|obede[çc]a|execute|wykonaj|zr[óo]b|uygula|yap|g[öo]r\s+det|f[öo]lj|jalank\w*|lakukan|kerjakan|turuti|"
    r"làm\s+theo|thực\s+hiện)\b"
    r"|(?:выполн\w*|сделай|следуй|викона\w*|зроби|κάνε|εκτέλεσ\w*|ακολούθησ\w*|ותבצע|תבצע|בצע|ותעשה|תעשה|نفذ\w*|نفّذ\w*|طبق\w*|طبّق\w*|"
    r"انجام|اجرا|करो|मानो|পালন|করো|মানো|执行|照做|照著做|执行|実行|従って|その通り|실행|따라\s*해|그대로|ทำตาม)",
    re.IGNORECASE,
)


def asks_to_decode(text: str) -> bool:
    """Does the message name an encoding or ask for decoding / reading backwards?"""
    return bool(_DECODE_HINT.search(text) or _REVERSE_HINT.search(text))


def asks_to_execute(text: str) -> bool:
    """Does the message ask the bot to do what some text says ("… and follow it")?"""
    return bool(_EXECUTE_HINT.search(text))


# --------------------------------------------------------------------------------------------
# Readability: is a decoded string natural text?

_LETTER = re.compile(r"[^\W\d_]")


def _readable(text: str, min_letters: int = 3) -> bool:
    """Printable, mostly letters and spaces: what an instruction or a sentence decodes to
    (random bytes from a hash or an image almost never do)."""
    if not text or any(not ch.isprintable() and ch not in "\n\t\r" for ch in text):
        return False
    letters = len(_LETTER.findall(text))
    if letters < min_letters:
        return False
    return (letters + text.count(" ")) / len(text) >= 0.6


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start >= len(data) - 3 and err.reason == "unexpected end of data":
            return data[: err.start].decode("utf-8", "ignore")  # a blob cut mid-character
        return None


# --------------------------------------------------------------------------------------------
# Self-contained tokens: base64, hex, binary, escapes, Morse

# Patterns start with a character class, not a look-behind, so the regular-expression engine can
# skip ahead to candidates (several times faster on a long ordinary message); the character
# before a match is checked in :func:`_blobs`.
_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX_RUN = re.compile(r"(?:[0-9a-fA-F]{2}){6,}")
_HEX_SPACED = re.compile(r"[2-7][0-9a-fA-F](?:[ :,-][0-9a-fA-F]{2}){4,}(?![0-9A-Za-z])")  # text bytes start 2-7
_BINARY = re.compile(r"[01]{8}(?:\s+[01]{8}){2,}(?![01])")
_PERCENT = re.compile(r"(?:%[0-9a-fA-F]{2}){3,}")
_ENTITY = re.compile(r"&#(?:x[0-9a-fA-F]{1,6}|\d{1,7});")
_UPLUS = re.compile(r"(?:\bU\+|\\u)([0-9a-fA-F]{4,5})\b")
_MORSE = re.compile(r"[.\-]{1,6}(?:\s+(?:/\s+)?[.\-]{1,6}){3,}(?![\w.\-])")
_MORSE_CODE = {
    ".-": "a", "-...": "b", "-.-.": "c", "-..": "d", ".": "e", "..-.": "f", "--.": "g", "....": "h", "..": "i",
    ".---": "j", "-.-": "k", ".-..": "l", "--": "m", "-.": "n", "---": "o", ".--.": "p", "--.-": "q", ".-.": "r",
    "...": "s", "-": "t", "..-": "u", "...-": "v", ".--": "w", "-..-": "x", "-.--": "y", "--..": "z",
    "-----": "0", ".----": "1", "..---": "2", "...--": "3", "....-": "4", ".....": "5", "-....": "6", "--...": "7",
    "---..": "8", "----.": "9",
}


def _base64_text(token: str) -> str | None:
    body = token.rstrip("=")
    if len(body) % 4 == 1 or not (re.search(r"[A-Z]", body) and re.search(r"[a-z0-9]", body)):
        return None  # impossible length, or one letter case only (a word, a hex hash)
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_" if ("-" in body or "_" in body) else None, validate=True)
    except (binascii.Error, ValueError):
        return None
    text = _utf8(data)
    return text if text is not None and _readable(text) else None


def _hex_text(token: str) -> str | None:
    digits = re.sub(r"[ :,-]", "", token)
    try:
        text = _utf8(bytes.fromhex(digits))
    except ValueError:
        return None
    if text is None or not _readable(text):
        return None
    # Numbers alone ("scores 65 66 67 68 69") decode to letters too: hex words have a-f or spaces.
    return text if re.search(r"[a-fA-F]", digits) or " " in text else None


def _binary_text(token: str) -> str | None:
    text = _utf8(bytes(int(b, 2) for b in token.split()))
    return text if text is not None and _readable(text) else None


def _morse_text(token: str) -> str | None:
    words = []
    for word in re.split(r"\s*/\s*|\s{3,}", token.strip()):
        letters = [_MORSE_CODE.get(code) for code in word.split()]
        if not letters or None in letters:
            return None
        words.append("".join(letters))  # type: ignore[arg-type]
    text = " ".join(words)
    return text if sum(len(w) for w in words) >= 4 else None


def _blobs(text: str) -> list[Decoded]:
    found: list[Decoded] = []
    tried = 0

    def add(kind: str, decoded: str | None) -> None:
        if decoded and len(found) < MAX_BLOBS:
            found.append(Decoded(kind, decoded.strip(), blob=True))

    candidates = [("hex", _HEX_SPACED, _hex_text), ("token", _TOKEN, _token_text)]
    if "0" in text and "1" in text:
        candidates.append(("binary", _BINARY, _binary_text))
    if ".-" in text or "-." in text or "--" in text:
        candidates.append(("morse", _MORSE, _morse_text))
    for kind, pattern, decode in candidates:
        for match in pattern.finditer(text):
            tried += 1
            if len(found) >= MAX_BLOBS or tried > MAX_TRIES:
                return found
            start, token = match.start(), match.group(0)
            if len(token) > MAX_BLOB_CHARS or (start and (text[start - 1].isalnum() or text[max(0, start - 7) : start] == "base64,")):
                continue  # too long to be a message, glued to a word, or a data URI's payload (an image)
            if kind == "token":
                kind_found, decoded = decode(token)
                add(kind_found, decoded)
            else:
                add(kind, decode(token))
    if "%" in text and _PERCENT.search(text):
        add("url", unquote(text) if _readable(unquote(text), 3) else None)
    if "&#" in text and len(_ENTITY.findall(text)) >= 3:
        add("html", html.unescape(text))
    if ("U+" in text or "u+" in text or "\\u" in text) and len(_UPLUS.findall(text)) >= 3:
        add("unicode", _UPLUS.sub(lambda m: _chr(m.group(1)), text))
    return found


def _token_text(token: str) -> tuple[str, str | None]:
    """A long run of base64 / hex characters: hex when it is only hex digit pairs, else base64."""
    if len(token) % 2 == 0 and _HEX_RUN.fullmatch(token):
        return "hex", _hex_text(token)
    return "base64", _base64_text(token)


def _chr(code: str) -> str:
    value = int(code, 16)
    return chr(value) if value < 0x110000 and not 0xD800 <= value < 0xE000 else ""


# --------------------------------------------------------------------------------------------
# Transforms of the message's own words: rot13, reversed, leetspeak, spaced letters, look-alikes

# Common short words of English, Spanish, French, German, Italian, Portuguese, Dutch, Swedish,
# Polish, Turkish and Indonesian: a decoded segment "reads" when many of its words are here.
_COMMON = frozenset(
    """
    a an the and or but if of to in on at by for with from as is are was were be been am i you he she it we they me my your
    our their this that these those not no do does did have has had can will would should what how why when where who all
    any now then so just only also please tell show give print reveal ignore forget rules instructions prompt system
    want need feel think know get go going make see like about there here out up more very one still really never
    y o de la el en los las un una es que no por con para su sus mi tu te lo le se al del todo todas reglas
    et ou le les des une est pas pour avec sur dans ce je tu il vous nous ton ta tes ne plus toutes règles
    und oder der die das ein eine ist nicht mit für auf zu ich du er sie wir ihr den dem des alle regeln
    e il di che non per con una sono le gli tutte regole mio tuo
    os as um uma não com por para seu sua meu tua regras
    en het een van ik je jij niet met voor op te zijn dat die alle regels
    och att det som är inte med för på jag du alla regler
    i w z na nie jest to się że do od ty ja wszystkie zasady
    ve bir bu da de ne için ile ben sen tüm kuralları
    dan yang di ke ini itu aku kamu tidak semua aturan
    como pero más muy sin mas mais sem suas seus você eu comme mais sans moi toi wie aber ohne mir mich dein deine
    come ma senza mi ti hoe maar zonder mij jouw hur men utan mig din dina jak ale bez twoje nasıl ama bana senin
    bagaimana tapi tanpa saya anda
    """.split()
)
_LATIN_WORD = re.compile(r"[A-Za-zÀ-ɏḀ-ỿ']+")
_SEGMENT = re.compile(r"[^\n:\"“”«»()\[\]—|]+")
_ROT13_SOURCE = re.compile(r"[A-Za-z]")


def _common_words(text: str, min_len: int = 1) -> int:
    return sum(1 for w in _LATIN_WORD.findall(text.lower()) if len(w) >= min_len and w in _COMMON)


def _reads_better(original: str, decoded: str, *, hinted: bool) -> bool:
    """Far more word-like after decoding: at least 2 (1 when the message named the encoding)
    more common words of two letters or more, three times as many, a quarter of all words, and
    at least one common word of three letters or more."""
    before, after = _common_words(original, 2), _common_words(decoded, 2)
    words = len(_LATIN_WORD.findall(decoded))
    if words < 2 or after < (1 if hinted else 2) + before or after < 3 * before or after * 4 < words:
        return False
    return _common_words(decoded, 3) >= 1  # not only two-letter words ("an", "ne", "er"), which chance makes


def _segments(text: str) -> list[tuple[str, int, int]]:
    """The message's segments (split at lines, colons, quotes, brackets, dashes), each with its
    count of Latin words and of common words."""
    out = []
    for match in _SEGMENT.finditer(text):
        segment = match.group(0).strip()
        if len(segment) >= 4:
            words = _LATIN_WORD.findall(segment.lower())
            out.append((segment, len(words), sum(1 for w in words if w in _COMMON)))
            if len(out) >= MAX_SEGMENTS:
                break
    return out


def _rot13(low: str, segments: list[tuple[str, int, int]]) -> list[Decoded]:
    hinted = _hinted(low, _ROT13_KEYS, _ROT13_HINT)
    found = []
    for segment, words, common in segments:
        if words < 2 or common * 4 > words:
            continue  # reads already (a quarter of its words are common ones)
        decoded = codecs.encode(segment, "rot13")
        if _reads_better(segment, decoded, hinted=hinted):
            found.append(Decoded("rot13", decoded))
    return found


def _reversed(low: str, segments: list[tuple[str, int, int]]) -> list[Decoded]:
    hinted = _hinted(low, _REVERSE_KEYS, _REVERSE_HINT)
    found = []
    for segment, words, common in segments:
        if common * 4 > words:
            continue  # reads forwards
        if hinted and (words >= 2 or not words) and len(_LETTER.findall(segment)) >= 6:
            found.append(Decoded("reversed", segment[::-1]))  # asked for (Thai, Chinese: no Latin words at all)
        elif words >= 2 and _reads_better(segment, segment[::-1], hinted=False):
            found.append(Decoded("reversed", segment[::-1]))
    return found


_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_WORD = re.compile(r"(?<!\S)(?=\S*[A-Za-z])(?=\S*[013457@$])[A-Za-z013457@$]{3,}(?!\S)")
# Arabizi (Arabic in Latin letters) writes letters as 2, 3, 5, 6, 7, 8, 9: not leetspeak. A
# word with 3, 5 or 7 alone ("ya3ni", "7ar") is leet only beside sure ones (0, 1, 4, @, $).
_ARABIZI = re.compile(r"[A-Za-z][2689]|[2689][A-Za-z]")
_SURE_LEET = re.compile(r"[014@$]")
_LEET_GATE = re.compile(r"[013457@$](?:(?<=[A-Za-z].)|(?=[A-Za-z]))")  # a substitute beside a letter
_UNIT = re.compile(r"\d+(?:mg|ml|mcg|kg|g|mm|cm|km|ma|h|hrs?|min|am|pm|st|nd|rd|th|x|k|m|s|yo|y|v|c|l|d|w)", re.IGNORECASE)


def _leet(text: str) -> list[Decoded]:
    """Leetspeak: at least two words of letters and 0/1/3/4/5/7/@/$ only ("5h0w", "pr1nt"); a
    word with another digit ("B12", "1Z999AA1…", "covid19") or an amount ("10mg", "5am") is not."""
    if len(_LEET_GATE.findall(text)) < 2 or _ARABIZI.search(text):
        return []
    words = [m.group(0) for m in _LEET_WORD.finditer(text) if not _UNIT.fullmatch(m.group(0))]
    if sum(1 for w in words if _SURE_LEET.search(w)) < 2:
        return []
    changed = 0

    def swap(match: re.Match[str]) -> str:
        nonlocal changed
        word = match.group(0)
        if _UNIT.fullmatch(word):
            return word
        changed += 1
        return word.translate(_LEET)

    decoded = _LEET_WORD.sub(swap, text)
    return [Decoded("leet", decoded)] if changed >= 2 else []


# Letters of alphabets only (Latin, Greek, Cyrillic, Hebrew, Arabic): a Korean or Chinese
# one-syllable word is a word.
_ALPHA = "A-Za-zÀ-ɏ\u0370-\u052f\u05d0-\u05ea\u0620-\u064a"
_SPACED_RUN = re.compile(rf"(?<!\S)[{_ALPHA}](?:(?: | {{2,}}| / | \| )[{_ALPHA}](?!\S)){{3,}}")
_DOTTED = re.compile(rf"(?<!\S)[{_ALPHA}](?:([.\-_*·])[{_ALPHA}])(?:\1[{_ALPHA}]){{2,}}\1?(?!\S)")


_ALPHA_LETTER = re.compile(f"[{_ALPHA}]")


def _has_spaced_letters(text: str) -> bool:
    """Four one-letter words in a row, or one word of dotted letters: the cheap test first."""
    run = 0
    for word in text.split():
        if len(word) == 1 and _ALPHA_LETTER.match(word):
            run += 1
            if run >= 4:
                return True
        else:
            run = 0
            if len(word) >= 7 and word[1] in ".-_*·" and word[3] == word[1] == word[5]:
                return True
    return False


def _spaced(text: str) -> list[Decoded]:
    """Letters spaced or dotted out ("i g n o r e  a l l", "i.g.n.o.r.e"): joined again; a wider
    gap (two spaces, " / ") separates words."""
    if not _has_spaced_letters(text):
        return []
    count = 0

    def join_spaced(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return " ".join(w.replace(" ", "") for w in re.split(r" {2,}| / | \| ", match.group(0)))

    def join_dotted(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return re.sub(r"[.\-_*·]", "", match.group(0))

    decoded = _DOTTED.sub(join_dotted, _SPACED_RUN.sub(join_spaced, text))
    return [Decoded("spaced", decoded)] if count and decoded != text else []


_ACROSTIC_HINT = re.compile(
    r"\b(?:first\s+letters?|initial\s+letters?|initials|acrostic|primeras?\s+letras?|premi[èe]res?\s+lettres?|"
    r"anfangsbuchstaben|erste[nr]?\s+buchstaben|prim[ae]\s+letter[ae]|primeiras?\s+letras?|eerste\s+letters?|"
    r"pierwsz\w+\s+liter\w*|ilk\s+harf\w*|первы\w+\s+букв\w*|перш\w+\s+літер\w*)"
    r"|(?:首字母|頭文字|첫\s*글자|ตัวแรก)",
    re.IGNORECASE,
)
_INITIAL_WORD = re.compile(r"(?<![^\W\d_])[^\W\d_]")
_INITIAL_LINE = re.compile(r"^\W*([^\W\d_])", re.MULTILINE)
_INITIAL_SENTENCE = re.compile(r"(?:^|[.!?]+\s+)\W*([^\W\d_])")


def _acrostic(text: str) -> list[Decoded]:
    """The first letters of the words, lines or sentences after "take the first letter of each …"."""
    low = text.lower()
    hint = _ACROSTIC_HINT.search(low) if any(key in low for key in _ACROSTIC_KEYS) else None
    if not hint:
        return []
    rest = text[hint.end() :]
    rest = rest[rest.find(":") + 1 :] if ":" in rest[:60] else rest
    found = []
    for initials in (_INITIAL_WORD.findall(rest), _INITIAL_LINE.findall(rest), _INITIAL_SENTENCE.findall(rest)):
        if len(initials) >= 4:
            found.append(Decoded("acrostic", "".join(initials)))
    return found


# Latin look-alikes in Cyrillic and Greek (lower and upper case), applied only when a word mixes
# scripts: a whole Russian or Greek message is left alone.
_CONFUSABLE = str.maketrans({
    "а": "a", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j", "ӏ": "l", "о": "o", "р": "p", "ԛ": "q",
    "ѕ": "s", "ԝ": "w", "х": "x", "у": "y", "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J",
    "К": "K", "М": "M", "О": "O", "Р": "P", "Ѕ": "S", "Т": "T", "Х": "X", "Ү": "Y", "α": "a", "ε": "e", "ι": "i",
    "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "Α": "A", "Β": "B", "Ε": "E", "Η": "H", "Ι": "I",
    "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Χ": "X", "Υ": "Y", "Ζ": "Z",
})
_MIXED_SCRIPT = re.compile(r"[A-Za-z][\u0370-\u03ff\u0400-\u052f]|[\u0370-\u03ff\u0400-\u052f][A-Za-z]")
_BEYOND_LATIN = re.compile("[\u0370-\U0010ffff\u00ad\u180e]")
_GREEK_CYRILLIC = re.compile("[\u0370-\u052f]")
_INVISIBLE_CHARS = "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"
_INVISIBLE = re.compile("[\u200b\u200e\u200f\u2060-\u2064\ufeff\u00ad\u180e]|(?<=[A-Za-z])[\u200c\u200d]+(?=[A-Za-z])")
_COMPAT_LETTERS = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\u24b6-\u24e9\U0001d400-\U0001d7ff\U0001f130-\U0001f189]{4,}")  # a word of them, not a lone "ｗ"


_WORD = re.compile(r"\w+")


def _fold_word(match: re.Match[str]) -> str:
    word = match.group(0)
    folded = word.translate(_CONFUSABLE)
    # a word mixing scripts, or one written only in look-alikes ("аll" made of Cyrillic а + ll)
    return folded if _MIXED_SCRIPT.search(word) or folded.isascii() else word


def _lookalikes(text: str) -> list[Decoded]:
    """Zero-width characters dropped, fullwidth / mathematical / circled letters made plain,
    Cyrillic and Greek look-alikes inside Latin words made Latin."""
    out = text
    if not _BEYOND_LATIN.search(out):
        return []  # ASCII and Latin letters only: nothing to make plain
    if any(ch in out for ch in _INVISIBLE_CHARS) and _INVISIBLE.search(out):
        out = _INVISIBLE.sub("", out)
    if _COMPAT_LETTERS.search(out):
        out = unicodedata.normalize("NFKC", out)
    if _GREEK_CYRILLIC.search(out) and _MIXED_SCRIPT.search(out):
        out = _WORD.sub(_fold_word, out)
    return [Decoded("lookalike", out)] if out != text else []


# --------------------------------------------------------------------------------------------


def find_encoded(text: str) -> list[Decoded]:
    """Every decoded text hidden in ``text`` (empty for an ordinary message)."""
    text = (text or "")[:MAX_CHARS]
    if not text.strip():
        return []
    plain = _lookalikes(text)
    base = plain[0].text if plain else text
    found = plain + _blobs(base) + _leet(base) + _spaced(base)
    segments, low = _segments(base), base.lower()
    found += _rot13(low, segments) + _reversed(low, segments) + _acrostic(base)
    return list({(d.kind, d.text): d for d in found if d.text.strip()}.values())


def decoded_texts(text: str) -> list[str]:
    """The decoded texts alone (for the crisis rules and model to read as well)."""
    return [d.text for d in find_encoded(text)]
