// Module GRU4Rec.
//
// The model: embedding → GRU → linear over items. `ParameterLayout` derives
// every named view (PyTorch's state-dict names and shapes) from one
// (name, shape) table over one flat parameter buffer; `PackedBatch` packs
// prefixes by length; `GRU4Rec` computes the weighted cross-entropy and its
// exact gradient (checked by finite differences and an independent reference).
