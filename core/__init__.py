"""The torch-free core that serving and training share: what a served model is (``spec``),
how an uploaded image becomes the 28x28 the networks read (``preprocess``), the error a bad
input becomes (``errors``) and how a model decides "is this a digit at all" (``digit_rule``).

It imports numpy and Pillow only. ``service`` (serving) and ``models`` (the networks,
their training and checks) both build on it, and it imports neither: a change here changes
what training sees and what serving sees alike, and ``preprocess.PREPROCESSING_VERSION``,
recorded in every checkpoint's metadata, says which preprocessing the weights were fitted with.
"""
