"""Numbers printed by the seed notebook (../shared/seed/token_embeddings_notebook.txt)."""

# The seed's first 8x4 batch of GPT-2 ids (batch 8, max_length 4, stride 4, no shuffle).
SEED_FIRST_BATCH = [
    [464, 4935, 20336, 46566],
    [286, 43989, 290, 38201],
    [198, 220, 220, 220],
    [220, 198, 1212, 47179],
    [318, 329, 262, 779],
    [286, 2687, 6609, 287],
    [262, 1578, 1829, 290],
    [198, 1712, 584, 3354],
]

# The opening of the seed's copy of the corpus ("This ebook", lower case).
SEED_HEADER = (
    "The Project Gutenberg eBook of Romeo and Juliet\n    \nThis ebook is for the use of "
    "anyone anywhere in the United States and\nmost other parts of the world at no cost..."
)
