// Tokenizers: byte-level BPE and SentencePiece BPE, chat templates.
