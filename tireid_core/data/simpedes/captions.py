"""Captions: annotator styles, synonyms, visibility-aware mentions, colour mistakes and per-token part labels.

Each annotator style has its own part order, preferred synonyms, verbosity, sentence form and omission habit.
A caption mentions only the parts visible in its image, and every processed token carries the label of the part
it describes ("none" for function words), the ground truth of `token_part_labels`.
"""
from __future__ import annotations

from tireid_core.data.simpedes.attributes import COLOURS, HAIR_COLOURS
from tireid_core.data.simpedes.params import SimPEDESParams
from tireid_core.data.simpedes.streams import T_STYLE, pick, stream
from tireid_core.data.tokenizers import word_tokens

SYNONYMS = {  # concept: surface forms an annotator may prefer
    "grey": ["grey", "gray"], "purple": ["purple", "violet"], "blond": ["blond", "blonde"],
    "t-shirt": ["t-shirt", "tee shirt", "short-sleeved shirt"],
    "shirt": ["shirt", "long-sleeved shirt", "button-up shirt"],
    "jacket": ["jacket", "windbreaker", "zip-up jacket"], "sweater": ["sweater", "jumper", "pullover"],
    "coat": ["coat", "long coat", "overcoat"], "trousers": ["trousers", "pants", "slacks"],
    "jeans": ["jeans", "denim pants"], "shorts": ["shorts", "short pants"], "skirt": ["skirt", "knee-length skirt"],
    "shoes": ["shoes", "sneakers", "footwear"], "backpack": ["backpack", "rucksack", "school bag"],
    "shoulder bag": ["shoulder bag", "messenger bag", "bag"], "handbag": ["handbag", "purse"],
    "cap": ["cap", "baseball cap"], "beanie": ["beanie", "knit hat"], "sunhat": ["hat", "sun hat"],
    "striped": ["striped", "with stripes"], "checked": ["plaid", "checked", "checkered"],
    "logo": ["with a logo", "with a print on the front"],
    "man": ["man", "male", "guy", "gentleman"], "woman": ["woman", "female", "lady", "girl"],
    "wearing": ["wearing", "in", "dressed in"], "wears": ["is wearing", "wears", "has on"],
    "carrying": ["carrying", "holding", "with"], "carries": ["is carrying", "carries", "has"],
}
PLURAL = {"trousers", "pants", "slacks", "jeans", "denim pants", "shorts", "short pants", "shoes", "sneakers"}
MASS = {"footwear"}
FUNCTION_WORDS = {"a", "an", "the", "and", "with", "in", "on", "of", "his", "her", "over", "at"}
PART_ORDERS = [("head", "upper", "lower", "shoes", "bag"), ("upper", "lower", "shoes", "bag", "head"),
               ("upper", "lower", "bag", "shoes", "head"), ("head", "upper", "bag", "lower", "shoes")]
MODES = ("long", "short", "long", "terse")  # styles cycle through these sentence forms
MIN_PIXELS = {"head": 8, "upper": 20, "lower": 20, "shoes": 4, "bag": 10}


def make_styles(p: SimPEDESParams):
    """Annotator profiles: part order, preferred synonyms, verbosity, sentence form, omission habit."""
    styles = []
    for s in range(p.annotator_styles):
        rng = stream(p.seed, T_STYLE, s)
        styles.append({
            "style": s,
            "mode": MODES[s % len(MODES)],
            "finite": bool(rng.random() < 0.5),  # "is wearing ..." clauses instead of "wearing ..." phrases
            "order": list(PART_ORDERS[int(rng.integers(len(PART_ORDERS)))]),
            "verbosity": int(rng.integers(0, 3)),
            "omit_p": round(float(rng.uniform(0.03, 0.15)), 4),
            "variability": round(float(rng.uniform(0.0, 0.4)), 4),
            "synonyms": {k: int(rng.integers(len(v))) for k, v in sorted(SYNONYMS.items())},
            "determiner": pick(rng, ["a", "the", "this"]),
            "separator": pick(rng, [",", ";"]),
        })
    return styles


class _Caption:
    """Builds a caption word by word, each word with its part label."""

    def __init__(self, style, rng, error_rate):
        self.style, self.rng, self.error_rate = style, rng, error_rate
        self.words: list[tuple[str, str]] = []  # (surface word or punctuation, label)
        self.errors: list[dict] = []

    def syn(self, concept):
        opts = SYNONYMS[concept]
        if self.rng.random() < self.style["variability"]:
            return opts[int(self.rng.integers(len(opts)))]
        return opts[self.style["synonyms"][concept]]

    def colour(self, name, part, palette):
        """A colour word, occasionally wrong (an annotator's mistake), recorded in `errors`."""
        said = name
        if self.rng.random() < self.error_rate:
            others = [c for c in palette if c != name]
            said = others[int(self.rng.integers(len(others)))]
            self.errors.append({"part": part, "true": name, "said": said})
        return self.syn(said) if said in SYNONYMS else said

    def np_(self, part, adjectives, noun, post=(), article=True):
        """Noun phrase: [a/an] adjectives noun post-modifiers; content words get `part`, function words none."""
        phrase = [w for a in adjectives for w in a.split()] + noun.split()
        plural = noun in PLURAL or noun in MASS
        out = []
        if article and not plural:
            out.append(("an" if phrase[0][0] in "aeiou" else "a", "none"))
        out += [(w, part) for w in phrase]
        out += [(w, "none" if w in FUNCTION_WORDS else part) for p_ in post for w in p_.split()]
        return out

    def text_and_labels(self):
        """Assemble text (sentence case, no space before punctuation), processed tokens and labels."""
        text, toks, labels, start = "", [], [], True
        for w, lab in self.words:
            if w in ",;.":
                text += w
                start = start or w == "."
                continue
            text += (" " if text else "") + (w[0].upper() + w[1:] if start else w)
            start = False
            for t in word_tokens(w):
                toks.append(t)
                labels.append(lab)
        return text, toks, labels


def _part_phrase(c: _Caption, part, attrs, view, terse):
    """The noun phrase describing one part, or [] when there is nothing to say about it."""
    v, palette = c.style["verbosity"], list(COLOURS)
    if part == "head":
        out = []
        style = attrs["hair_style"]
        hat_hides = attrs["hat"] == "beanie"
        if style == "bald":
            if attrs["hat"] == "none":
                out = [("bald", "head"), ("head", "head")] if terse else c.np_("head", ["bald"], "head")
        elif not hat_hides or v == 2:
            col = [c.colour(attrs["hair_colour"], "head", list(HAIR_COLOURS))] if v > 0 or style != "short" else []
            if style == "ponytail":
                out = c.np_("head", col, "ponytail", article=not terse)
            else:
                out = [(w, "head") for w in ([style] + col + ["hair"])]
        if attrs["hat"] != "none":
            hat = c.np_("head", [c.colour(attrs["hat_colour"], "head", palette)], c.syn(attrs["hat"]),
                        article=not terse)
            out = out + [("and", "none")] + hat if out else hat
        return out
    if part == "upper":
        adj, post = [c.colour(attrs["upper_colour"], "upper", palette)], []
        pat = attrs["upper_pattern"]
        if pat == "logo" and view == "front" and v > 0:
            post = [c.syn("logo")]
        elif pat in ("striped", "checked") and v > 0:
            word = c.syn(pat)
            if word.startswith("with"):
                post = [word if v < 2 else f"with {c.colour(attrs['upper_colour2'], 'upper', palette)} stripes"]
            else:
                adj.append(word)
        return c.np_("upper", adj, c.syn(attrs["upper_type"]), post, article=not terse)
    if part == "lower":
        return c.np_("lower", [c.colour(attrs["lower_colour"], "lower", palette)], c.syn(attrs["lower_type"]),
                     article=not terse)
    if part == "shoes":
        return c.np_("shoes", [c.colour(attrs["shoes_colour"], "shoes", palette)], c.syn("shoes"), article=False)
    if attrs["bag_type"] == "none":
        return []
    post = []
    if attrs["bag_type"] == "backpack" and view == "back" and v > 0 and not terse:
        post = ["on " + ("his" if attrs["gender"] == "man" else "her") + " back"]
    return c.np_("bag", [c.colour(attrs["bag_colour"], "bag", palette)], c.syn(attrs["bag_type"]), post,
                 article=not terse)


def caption(style, rng, attrs, gt, error_rate):
    """One description of one image by one annotator style; mentions only parts visible in the image."""
    c = _Caption(style, rng, error_rate)
    mode, terse = style["mode"], style["mode"] == "terse"
    mentioned = []
    for part in style["order"]:
        visible = gt["visibility"].get(part, 0.0) >= 0.5 and gt["visible_pixels"].get(part, 0) >= MIN_PIXELS[part]
        terse_shoes = 0.4 if part == "shoes" and style["verbosity"] == 0 else 0.0  # terse annotators skip shoes
        omit = part != "upper" and rng.random() < style["omit_p"] + terse_shoes
        if not visible or omit:
            continue
        phrase = _part_phrase(c, part, attrs, gt["view"], terse)
        if phrase:
            mentioned.append((part, phrase))
    pron = "he" if attrs["gender"] == "man" else "she"
    subj = c.syn(attrs["gender"])
    build = []
    if style["verbosity"] == 2 and attrs["build"] != "average":
        build = [("heavy-set" if attrs["build"] == "heavy" else attrs["build"], "none")]
    W = c.words

    if terse:
        W += build + [(subj, "none")]
        for _, phrase in mentioned:
            W += [(style["separator"], "none")] + phrase
        W += [(".", "none")]
    elif mode == "short":
        W += [(style["determiner"], "none")] + build + [(subj, "none")]
        first = True
        for part, phrase in mentioned:
            if not first:
                W += [(pron, "none")]
            if part == "head":
                W += [("has", "none")] + phrase
            elif part == "bag":
                W += [(w, "none") for w in c.syn("carries").split()] + phrase
            else:
                W += [(w, "none") for w in c.syn("wears").split()] + phrase
            W += [(".", "none")]
            first = False
        if first:
            W += [("is", "none"), ("walking", "none"), (".", "none")]
    else:  # one long sentence: participial phrases or finite clauses, wearables merged into one list
        W += [(style["determiner"], "none")] + build + [(subj, "none")]
        groups = []  # (kind, [phrases])
        for part, phrase in mentioned:
            kind = part if part in ("head", "bag") else "wear"
            if groups and groups[-1][0] == kind == "wear":
                groups[-1][1].append(phrase)
            else:
                groups.append((kind, [phrase]))
        for gi, (kind, phrases) in enumerate(groups):
            if gi > 0:
                W += [(",", "none")]
                if style["finite"] and gi == len(groups) - 1:
                    W += [("and", "none")]
            if style["finite"]:
                verb = {"head": "has", "bag": c.syn("carries"), "wear": c.syn("wears")}[kind]
            else:
                verb = {"head": "with", "bag": c.syn("carrying"), "wear": c.syn("wearing")}[kind]
            W += [(w, "none") for w in verb.split()]
            for pi, phrase in enumerate(phrases):
                if pi > 0:
                    W += [("and", "none")] if pi == len(phrases) - 1 else [(",", "none")]
                W += phrase
        if not groups:
            W += [("is", "none"), ("walking", "none")]
        if rng.random() < (0.5 if style["verbosity"] == 2 else 0.1):
            W += [(",", "none")] + [(w, "none") for w in
                                    {"front": "facing the camera", "back": "walking away from the camera",
                                     "side": "seen from the side"}[gt["view"]].split()]
        W += [(".", "none")]
    text, toks, labels = c.text_and_labels()
    return text, toks, {"style": style["style"], "part_labels": labels, "errors": c.errors,
                        "mentioned": [p_ for p_, _ in mentioned]}
