"""The batch vocabulary every data module produces and every task reads.

A batch is a dict of tensors under these keys: ``input_ids``, ``attention_mask`` (1 at real tokens),
``token_type_ids``, ``labels``, ``next_sentence_label`` (and ``decoder_input_ids`` for encoder-decoders), and
``document_ids`` for rows that pack several documents (the document of each position, one run of equal ids
per document, counted from 0 in each row: no position may attend to another document).
A label equal to `IGNORE_INDEX` is not scored: padding, context-only positions, a word's later
subwords, tokens the tokenizer could not represent.
"""

IGNORE_INDEX = -100
"""The label that no loss or metric scores (PyTorch's ``cross_entropy`` default ``ignore_index``)."""
