"""Lightning DataModules over a prepared dataset: :mod:`.base` (the evaluation side every model shares),
:mod:`.sequence` (windows for SASRec and DARec), :mod:`.interaction` (BPR pairs and the graph for LightGCN) and
:mod:`.training` (what their training loaders share)."""
