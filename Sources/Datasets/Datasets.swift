// Module Datasets.
//
// Data in: event logs (CSV, TSV, any single-character delimiter, RecBole
// atomic files) become sessions with reliability scores, a vocabulary,
// (prefix → next item) pairs and cold-start episodes with disjoint
// train/val/test users (`Prepare`, docs/FORMATS.md "How prepare builds it");
// `Dataset` holds them (as `Column`s: built in memory, or views of a mapped
// dataset file) with their fingerprint; `Synth` writes
// synthetic logs with planted structure.
