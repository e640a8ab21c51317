#ifndef METATRAIN_CHDF5_SHIM_H
#define METATRAIN_CHDF5_SHIM_H
#include <hdf5.h>

/* HDF5's type ids and flags are macros over C globals (and H5open calls);
   Swift 6 rejects them as shared mutable state, so expose them as functions. */
static inline hid_t mt_h5t_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t mt_h5t_native_int8(void) { return H5T_NATIVE_INT8; }
static inline hid_t mt_h5t_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t mt_h5t_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t mt_h5t_c_s1(void) { return H5T_C_S1; }
static inline hid_t mt_h5t_std_i8le(void) { return H5T_STD_I8LE; }
static inline hid_t mt_h5t_std_i32le(void) { return H5T_STD_I32LE; }
static inline hid_t mt_h5t_std_i64le(void) { return H5T_STD_I64LE; }
static inline hid_t mt_h5t_ieee_f32le(void) { return H5T_IEEE_F32LE; }
static inline hid_t mt_h5p_default(void) { return H5P_DEFAULT; }
static inline hid_t mt_h5s_all(void) { return H5S_ALL; }
/* Property lists with object time stamps off, so identical contents give identical files. */
static inline hid_t mt_h5p_dcpl_untimed(void) { hid_t p = H5Pcreate(H5P_DATASET_CREATE); H5Pset_obj_track_times(p, 0); return p; }
static inline hid_t mt_h5p_gcpl_untimed(void) { hid_t p = H5Pcreate(H5P_GROUP_CREATE); H5Pset_obj_track_times(p, 0); return p; }
static inline hid_t mt_h5p_fcpl_untimed(void) { hid_t p = H5Pcreate(H5P_FILE_CREATE); H5Pset_obj_track_times(p, 0); return p; }
/* A file held in memory only (the core driver without a backing store): built
   whole in RAM, then written out by us, so that a full disk is an ordinary
   write error and HDF5 never holds a half-written file it cannot close. */
static inline hid_t mt_h5p_fapl_memory(void) { hid_t p = H5Pcreate(H5P_FILE_ACCESS); H5Pset_fapl_core(p, 1 << 20, 0); return p; }
/* A file HDF5 writes to the disk itself (the default driver), its objects all
   closed with the file: for files larger than memory should hold twice. */
static inline hid_t mt_h5p_fapl_disk(void) { hid_t p = H5Pcreate(H5P_FILE_ACCESS); H5Pset_fclose_degree(p, H5F_CLOSE_STRONG); return p; }
/* Files the library holds open (every file id, including ones a failed close left). */
static inline ssize_t mt_h5_open_files(void) { return H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_FILE); }
static inline unsigned mt_h5f_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned mt_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline size_t mt_h5t_variable(void) { return H5T_VARIABLE; }

/* The address H5Dget_offset gives for a dataset that has no contiguous storage. */
static inline haddr_t mt_haddr_undef(void) { return HADDR_UNDEF; }

/* Silence HDF5's own stderr error stack; we report errors ourselves. */
static inline void mt_h5_silence_errors(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }
#endif
