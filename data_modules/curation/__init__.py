"""Visual-verification curation: raw listings -> verified aspects -> the four-family e-commerce instruction set."""
