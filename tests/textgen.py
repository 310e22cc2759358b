"""Synthetic English-like text for tests: our own words, deterministic by seed, with learnable structure."""

import random

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our neighbour", "the small bird", "a tired farmer",
            "the old king", "her brother", "the quiet student"]
VERBS = ["sees", "likes", "finds", "carries", "watches", "follows", "paints", "remembers", "builds", "answers"]
OBJECTS = ["the red ball", "a wooden house", "the long river", "an unbelievable story", "the morning newspaper",
           "a green apple", "the broken window", "a strange question", "the heavy basket", "an uncomfortable chair"]
PLACES = ["in the garden", "near the station", "after dinner", "before sunrise", "under the bridge", "at the market"]


def sentence(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.5:
        text += " " + rng.choice(PLACES)
    return text[0].upper() + text[1:] + "."


def documents(count: int, seed: int = 0, min_sentences: int = 1, max_sentences: int = 8) -> list[str]:
    """``count`` documents of a few sentences each."""
    rng = random.Random(seed)
    return [" ".join(sentence(rng) for _ in range(rng.randint(min_sentences, max_sentences))) for _ in range(count)]


DOMAIN_SUBJECTS = ["the chloroplast", "a mitochondrion", "the ribosome", "photosynthesis", "the cytoplasm",
                   "a phospholipid membrane", "the endoplasmic reticulum"]
DOMAIN_VERBS = ["synthesises", "phosphorylates", "catalyses", "transcribes", "oxidises", "metabolises"]
DOMAIN_OBJECTS = ["adenosine triphosphate", "the glycoprotein", "a polypeptide chain", "the nucleotide sequence",
                  "chlorophyll pigments", "the dehydrogenase enzyme"]


def domain_documents(count: int, seed: int = 0) -> list[str]:
    """A second domain (cell biology words the general text never uses), same grammar: for adaptation tests."""
    rng = random.Random(seed)

    def domain_sentence() -> str:
        text = f"{rng.choice(DOMAIN_SUBJECTS)} {rng.choice(DOMAIN_VERBS)} {rng.choice(DOMAIN_OBJECTS)}"
        return text[0].upper() + text[1:] + "."

    return [" ".join(domain_sentence() for _ in range(rng.randint(1, 6))) for _ in range(count)]
