// Module Storage.
//
// Files on disk through HDF5: the dataset and checkpoint formats (written
// atomically, checked on read: format, version, shapes, checksums and the
// dataset fingerprint; a dataset's numbers are used where they lie in the
// mapped file), a thin HDF5 wrapper, and TensorBoard event files.
