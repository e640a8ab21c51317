import CHDF5
import CLinux
import Core
import Foundation

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Numeric element types metatrain stores.
public protocol HDF5Scalar {
    static var memoryType: hid_t { get }
    static var fileType: hid_t { get }
    static var typeClass: H5T_class_t { get }
}
extension Float: HDF5Scalar {
    public static var memoryType: hid_t { mt_h5t_native_float() }
    public static var fileType: hid_t { mt_h5t_ieee_f32le() }
    public static var typeClass: H5T_class_t { H5T_FLOAT }
}
extension Int8: HDF5Scalar {
    public static var memoryType: hid_t { mt_h5t_native_int8() }
    public static var fileType: hid_t { mt_h5t_std_i8le() }
    public static var typeClass: H5T_class_t { H5T_INTEGER }
}
extension Int32: HDF5Scalar {
    public static var memoryType: hid_t { mt_h5t_native_int32() }
    public static var fileType: hid_t { mt_h5t_std_i32le() }
    public static var typeClass: H5T_class_t { H5T_INTEGER }
}
extension Int64: HDF5Scalar {
    public static var memoryType: hid_t { mt_h5t_native_int64() }
    public static var fileType: hid_t { mt_h5t_std_i64le() }
    public static var typeClass: H5T_class_t { H5T_INTEGER }
}

/// An open HDF5 file. The only type in metatrain that calls the HDF5 C API;
/// every failure becomes a MetatrainError naming the file and the object.
/// Handles are closed in deinit; a writer calls `close()`, which says whether
/// everything reached the file (a full disk shows up there at the latest).
public final class HDF5File {
    public let path: String
    let id: hid_t
    private var closed = false

    private init(path: String, id: hid_t) { self.path = path; self.id = id }
    deinit { if !closed { H5Fclose(id) } }

    /// Files HDF5 holds open in this process (one a failed close left would crash it at exit).
    public static var openFiles: Int { Int(mt_h5_open_files()) }

    /// Closes the file, writing out what HDF5 still buffers; throws if that fails.
    public func close() throws {
        guard !closed else { return }
        closed = true
        guard H5Fclose(id) >= 0 else { throw MetatrainError("\(path): cannot finish writing the file (disk full?)") }
    }

    /// Creates (truncates) a file for writing with file access `fapl`. Every object of 512
    /// bytes or more starts at a multiple of 64: a reader that maps the file (`mapped`) can
    /// use its numbers where they lie.
    private static func create(_ path: String, fapl: hid_t) throws -> HDF5File {
        mt_h5_silence_errors()
        let fcpl = mt_h5p_fcpl_untimed()
        defer { H5Pclose(fcpl) }
        H5Pset_alignment(fapl, 512, 64)
        let id = H5Fcreate(path, mt_h5f_acc_trunc(), fcpl, fapl)
        guard id >= 0 else { throw MetatrainError("\(path): cannot create HDF5 file") }
        return HDF5File(path: path, id: id)
    }

    /// Writes a file with `body` through HDF5's own disk driver, to `path` (a temporary name,
    /// see `writeAtomically`): nothing is held in memory beyond what `body` writes from, so
    /// a file as large as a dataset does not cost its size again. For one-shot writers
    /// (`prepare`); a long run's checkpoints use `write`, which keeps HDF5 off the disk.
    ///
    /// `reserve` bytes of disk are taken first (fallocate): a disk without room is said before
    /// anything is written. Should a write fail all the same, the file is emptied and removed
    /// before HDF5 closes it, so that HDF5 can close it (a file HDF5 cannot close crashes the
    /// process as it exits).
    public static func writeToDisk(_ path: String, reserve: Int = 0, _ body: (HDF5File) throws -> Void) throws {
        let fapl = mt_h5p_fapl_disk()
        defer { H5Pclose(fapl) }
        let f = try create(path, fapl: fapl)
        var handle: UnsafeMutableRawPointer?
        let fd = H5Fget_vfd_handle(f.id, mt_h5p_default(), &handle) >= 0 ? handle?.load(as: Int32.self) : nil
        func abandon(_ error: Error) -> Error {
            let full = fullDiskNote(URL(fileURLWithPath: path).deletingLastPathComponent().path)
            if let fd { _ = ftruncate(fd, 0) }
            unlink(path)
            try? f.close()
            return full.map { MetatrainError("\(error); \($0)") } ?? error
        }
        if reserve > 0, let fd {
            let e = metatrain_reserve_disk(fd, Int64(reserve))
            if e == ENOSPC || e == EDQUOT {
                throw abandon(
                    MetatrainError(
                        "\(path): no room for \(reserve / (1 << 20) + 1) MB (\(String(cString: strerror(e)))); nothing was written"
                    ))
            }
        }
        do {
            try body(f)
            try f.close()
        } catch {
            throw abandon(error)
        }
    }

    /// Builds a file in memory with `body` and writes its bytes to `path`
    /// (which must not exist; callers write a temporary name, see
    /// `writeAtomically`). HDF5 never writes to the disk itself, so a full disk
    /// is a plain write error here, with nothing left open in the library.
    public static func write(_ path: String, _ body: (HDF5File) throws -> Void) throws {
        let fapl = mt_h5p_fapl_memory()
        defer { H5Pclose(fapl) }
        let f = try create(path, fapl: fapl)
        let id = f.id
        try body(f)
        try f.flush()
        let size = H5Fget_file_image(id, nil, 0)
        guard size > 0 else { throw MetatrainError("\(path): cannot take the HDF5 file's image") }
        // One copy of the image, written straight from where HDF5 put it (large files, such as
        // datasets, go through `writeToDisk` instead).
        let image = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        defer { image.deallocate() }
        guard H5Fget_file_image(id, image.baseAddress, size) == size else {
            throw MetatrainError("\(path): cannot take the HDF5 file's image")
        }
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw MetatrainError("\(path): cannot write \(size) bytes (\(String(cString: strerror(errno))))")
        }
        if let e = writeAll(fd, UnsafeRawBufferPointer(image)) {
            Glibc.close(fd)
            unlink(path)
            throw MetatrainError("\(path): cannot write \(size) bytes (\(String(cString: strerror(e))))")
        }
        guard Glibc.close(fd) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(path)
            throw MetatrainError("\(path): cannot write \(size) bytes (\(why))")
        }
        try f.close()
    }

    /// Opens a file read-only; a missing, truncated or non-HDF5 file is an error.
    public static func open(_ path: String) throws -> HDF5File {
        mt_h5_silence_errors()
        guard access(path, R_OK) == 0 else { throw MetatrainError("\(path): no such file or not readable") }
        let id = H5Fopen(path, mt_h5f_acc_rdonly(), mt_h5p_default())
        guard id >= 0 else { throw MetatrainError("\(path): not an HDF5 file, or truncated") }
        return HDF5File(path: path, id: id)
    }

    // MARK: groups and links

    /// Creates every missing group along `path` ("a/b/c").
    public func createGroups(_ path: String) throws {
        var cur = ""
        for part in path.split(separator: "/") {
            cur += (cur.isEmpty ? "" : "/") + part
            if H5Lexists(id, cur, mt_h5p_default()) > 0 { continue }
            let gcpl = mt_h5p_gcpl_untimed()
            defer { H5Pclose(gcpl) }
            let g = H5Gcreate2(id, cur, mt_h5p_default(), gcpl, mt_h5p_default())
            guard g >= 0 else { throw MetatrainError("\(self.path): cannot create group '\(cur)'") }
            H5Gclose(g)
        }
    }

    public func exists(_ path: String) -> Bool {
        var cur = ""
        for part in path.split(separator: "/") {
            cur += (cur.isEmpty ? "" : "/") + part
            if H5Lexists(id, cur, mt_h5p_default()) <= 0 { return false }
        }
        return true
    }

    /// Names of the links directly under a group.
    public func children(_ group: String) throws -> [String] {
        let g = H5Gopen2(id, group, mt_h5p_default())
        guard g >= 0 else { throw MetatrainError("\(path): missing group '\(group)'") }
        defer { H5Gclose(g) }
        var info = H5G_info_t()
        guard H5Gget_info(g, &info) >= 0 else { throw MetatrainError("\(path): cannot list '\(group)'") }
        var names: [String] = []
        for i in 0..<info.nlinks {
            let n = H5Lget_name_by_idx(g, ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, i, nil, 0, mt_h5p_default())
            let n2 = n >= 0 ? n : H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, mt_h5p_default())
            guard n2 >= 0 else { continue }
            var buf = [CChar](repeating: 0, count: Int(n2) + 1)
            if H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buf, buf.count, mt_h5p_default()) >= 0 {
                names.append(cString(buf))
            }
        }
        return names
    }

    private func parentGroups(of path: String) throws {
        if let slash = path.lastIndex(of: "/") { try createGroups(String(path[..<slash])) }
    }

    // MARK: numeric datasets

    public func write<T: HDF5Scalar>(_ name: String, _ values: UnsafeBufferPointer<T>, shape: [Int]) throws {
        precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not hold \(values.count) values")
        try parentGroups(of: name)
        var dims = shape.map { hsize_t($0) }
        let space = H5Screate_simple(Int32(shape.count), &dims, nil)
        defer { H5Sclose(space) }
        let dcpl = mt_h5p_dcpl_untimed()
        defer { H5Pclose(dcpl) }
        let d = H5Dcreate2(id, name, T.fileType, space, mt_h5p_default(), dcpl, mt_h5p_default())
        guard d >= 0 else { throw MetatrainError("\(path): cannot create dataset '\(name)'") }
        defer { H5Dclose(d) }
        if values.count > 0 {
            guard H5Dwrite(d, T.memoryType, mt_h5s_all(), mt_h5s_all(), mt_h5p_default(), values.baseAddress) >= 0
            else {
                throw MetatrainError("\(path): cannot write dataset '\(name)'")
            }
        }
    }

    public func write<T: HDF5Scalar>(_ name: String, _ values: [T], shape: [Int]? = nil) throws {
        try values.withUnsafeBufferPointer { try write(name, $0, shape: shape ?? [values.count]) }
    }

    /// The shape of a dataset.
    public func shape(_ name: String) throws -> [Int] {
        guard exists(name) else { throw MetatrainError("\(path): missing dataset '\(name)'") }
        let d = H5Dopen2(id, name, mt_h5p_default())
        guard d >= 0 else { throw MetatrainError("\(path): cannot open dataset '\(name)'") }
        defer { H5Dclose(d) }
        return try shapeOf(d, name)
    }

    private func shapeOf(_ d: hid_t, _ name: String) throws -> [Int] {
        let space = H5Dget_space(d)
        defer { H5Sclose(space) }
        let rank = H5Sget_simple_extent_ndims(space)
        guard rank >= 0 else { throw MetatrainError("\(path): bad dataspace for '\(name)'") }
        var dims = [hsize_t](repeating: 0, count: Int(rank))
        H5Sget_simple_extent_dims(space, &dims, nil)
        return dims.map { Int($0) }
    }

    /// Opens a numeric dataset and checks its element class and (if given) its shape, for `body`.
    private func withChecked<T: HDF5Scalar, R>(
        _ name: String, _: T.Type, shape expected: [Int]?,
        _ body: (_ d: hid_t, _ type: hid_t, _ shape: [Int]) throws -> R
    ) throws -> R {
        guard exists(name) else { throw MetatrainError("\(path): missing dataset '\(name)'") }
        let d = H5Dopen2(id, name, mt_h5p_default())
        guard d >= 0 else { throw MetatrainError("\(path): cannot open dataset '\(name)'") }
        defer { H5Dclose(d) }
        let shape = try shapeOf(d, name)
        if let expected, expected != shape {
            throw MetatrainError("\(path): dataset '\(name)' has shape \(shape), expected \(expected)")
        }
        let t = H5Dget_type(d)
        defer { H5Tclose(t) }
        guard H5Tget_class(t) == T.typeClass else {
            throw MetatrainError("\(path): dataset '\(name)' has the wrong element type (expected \(T.self))")
        }
        return try body(d, t, shape)
    }

    /// Reads a whole numeric dataset, checking its element class and (if given) its shape.
    public func read<T: HDF5Scalar>(_ name: String, as: T.Type = T.self, shape expected: [Int]? = nil) throws -> (
        values: [T], shape: [Int]
    ) {
        try withChecked(name, T.self, shape: expected) { d, _, shape in
            let n = shape.reduce(1, *)
            var out = [T](unsafeUninitializedCapacity: n) { _, c in c = n }
            if n > 0 {
                let status = out.withUnsafeMutableBufferPointer {
                    H5Dread(d, T.memoryType, mt_h5s_all(), mt_h5s_all(), mt_h5p_default(), $0.baseAddress)
                }
                guard status >= 0 else {
                    throw MetatrainError("\(path): cannot read dataset '\(name)' (file truncated?)")
                }
            }
            return (out, shape)
        }
    }

    /// A whole numeric dataset where it lies in `mapping` (this file, mapped), checked as
    /// `read` checks it, without a copy; nil when it cannot be used in place (not stored
    /// contiguously, stored in another byte order or width, not aligned for its type, or
    /// empty): the caller reads it instead.
    public func mapped<T: HDF5Scalar>(
        _ name: String, as: T.Type = T.self, shape expected: [Int]? = nil, in mapping: FileMapping
    ) throws -> (values: UnsafeBufferPointer<T>, shape: [Int])? {
        try withChecked(name, T.self, shape: expected) { d, t, shape in
            let n = shape.reduce(1, *)
            let offset = H5Dget_offset(d)
            guard n > 0, H5Tequal(t, T.memoryType) > 0, offset != mt_haddr_undef() else { return nil }
            let start = Int(offset), bytes = n * MemoryLayout<T>.stride
            guard start % MemoryLayout<T>.alignment == 0 else { return nil }
            guard start + bytes <= mapping.bytes.count else {
                throw MetatrainError("\(path): dataset '\(name)' runs past the end of the file (file truncated?)")
            }
            let p = (mapping.bytes.baseAddress! + start).bindMemory(to: T.self, capacity: n)
            return (UnsafeBufferPointer(start: p, count: n), shape)
        }
    }

    /// Reads a float dataset straight into caller memory of exactly `count` floats.
    public func read(_ name: String, into dst: UnsafeMutablePointer<Float>, shape expected: [Int]) throws {
        guard exists(name) else { throw MetatrainError("\(path): missing dataset '\(name)'") }
        let d = H5Dopen2(id, name, mt_h5p_default())
        guard d >= 0 else { throw MetatrainError("\(path): cannot open dataset '\(name)'") }
        defer { H5Dclose(d) }
        let shape = try shapeOf(d, name)
        guard shape == expected else {
            throw MetatrainError("\(path): dataset '\(name)' has shape \(shape), expected \(expected)")
        }
        let t = H5Dget_type(d)
        defer { H5Tclose(t) }
        guard H5Tget_class(t) == H5T_FLOAT else { throw MetatrainError("\(path): dataset '\(name)' is not float") }
        guard H5Dread(d, mt_h5t_native_float(), mt_h5s_all(), mt_h5s_all(), mt_h5p_default(), dst) >= 0 else {
            throw MetatrainError("\(path): cannot read dataset '\(name)' (file truncated?)")
        }
    }

    // MARK: string datasets (variable-length UTF-8)

    private func vlenStringType() -> hid_t {
        let t = H5Tcopy(mt_h5t_c_s1())
        H5Tset_size(t, mt_h5t_variable())
        H5Tset_cset(t, H5T_CSET_UTF8)
        return t
    }

    public func writeStrings(_ name: String, _ values: [String]) throws {
        try parentGroups(of: name)
        let t = vlenStringType()
        defer { H5Tclose(t) }
        var dims = [hsize_t(values.count)]
        let space = H5Screate_simple(1, &dims, nil)
        defer { H5Sclose(space) }
        let dcpl = mt_h5p_dcpl_untimed()
        defer { H5Pclose(dcpl) }
        let d = H5Dcreate2(id, name, t, space, mt_h5p_default(), dcpl, mt_h5p_default())
        guard d >= 0 else { throw MetatrainError("\(path): cannot create dataset '\(name)'") }
        defer { H5Dclose(d) }
        let cstrings = values.map { strdup($0) }
        defer { cstrings.forEach { free($0) } }
        var ptrs: [UnsafePointer<CChar>?] = cstrings.map { UnsafePointer($0) }
        if !values.isEmpty {
            guard H5Dwrite(d, t, mt_h5s_all(), mt_h5s_all(), mt_h5p_default(), &ptrs) >= 0 else {
                throw MetatrainError("\(path): cannot write dataset '\(name)'")
            }
        }
    }

    public func readStrings(_ name: String) throws -> [String] {
        guard exists(name) else { throw MetatrainError("\(path): missing dataset '\(name)'") }
        let d = H5Dopen2(id, name, mt_h5p_default())
        guard d >= 0 else { throw MetatrainError("\(path): cannot open dataset '\(name)'") }
        defer { H5Dclose(d) }
        let shape = try shapeOf(d, name)
        guard shape.count == 1 else { throw MetatrainError("\(path): '\(name)' must be one-dimensional") }
        let ft = H5Dget_type(d)
        defer { H5Tclose(ft) }
        guard H5Tget_class(ft) == H5T_STRING, H5Tis_variable_str(ft) > 0 else {
            throw MetatrainError("\(path): '\(name)' is not a variable-length string dataset")
        }
        let t = vlenStringType()
        defer { H5Tclose(t) }
        var ptrs = [UnsafeMutablePointer<CChar>?](repeating: nil, count: shape[0])
        if shape[0] == 0 { return [] }
        guard H5Dread(d, t, mt_h5s_all(), mt_h5s_all(), mt_h5p_default(), &ptrs) >= 0 else {
            throw MetatrainError("\(path): cannot read dataset '\(name)' (file truncated?)")
        }
        let out = ptrs.map { $0.map { String(cString: $0) } ?? "" }
        let space = H5Dget_space(d)
        H5Dvlen_reclaim(t, space, mt_h5p_default(), &ptrs)
        H5Sclose(space)
        return out
    }

    // MARK: attributes on the root group

    public func setAttribute(_ name: String, _ value: String) throws {
        let t = vlenStringType()
        defer { H5Tclose(t) }
        let space = H5Screate(H5S_SCALAR)
        defer { H5Sclose(space) }
        let a = H5Acreate2(id, name, t, space, mt_h5p_default(), mt_h5p_default())
        guard a >= 0 else { throw MetatrainError("\(path): cannot create attribute '\(name)'") }
        defer { H5Aclose(a) }
        let c = strdup(value)
        defer { free(c) }
        var p: UnsafePointer<CChar>? = UnsafePointer(c)
        guard H5Awrite(a, t, &p) >= 0 else { throw MetatrainError("\(path): cannot write attribute '\(name)'") }
    }

    public func setAttribute(_ name: String, _ value: Int64) throws {
        let space = H5Screate(H5S_SCALAR)
        defer { H5Sclose(space) }
        let a = H5Acreate2(id, name, mt_h5t_std_i64le(), space, mt_h5p_default(), mt_h5p_default())
        guard a >= 0 else { throw MetatrainError("\(path): cannot create attribute '\(name)'") }
        defer { H5Aclose(a) }
        var v = value
        guard H5Awrite(a, mt_h5t_native_int64(), &v) >= 0 else {
            throw MetatrainError("\(path): cannot write attribute '\(name)'")
        }
    }

    private func openAttribute(_ name: String) throws -> hid_t {
        guard H5Aexists(id, name) > 0 else { throw MetatrainError("\(path): missing attribute '\(name)'") }
        let a = H5Aopen(id, name, mt_h5p_default())
        guard a >= 0 else { throw MetatrainError("\(path): cannot open attribute '\(name)'") }
        return a
    }

    public func hasAttribute(_ name: String) -> Bool { H5Aexists(id, name) > 0 }

    public func stringAttribute(_ name: String) throws -> String {
        let a = try openAttribute(name)
        defer { H5Aclose(a) }
        let ft = H5Aget_type(a)
        defer { H5Tclose(ft) }
        guard H5Tget_class(ft) == H5T_STRING else {
            throw MetatrainError("\(path): attribute '\(name)' is not a string")
        }
        if H5Tis_variable_str(ft) > 0 {
            let t = vlenStringType()
            defer { H5Tclose(t) }
            var p: UnsafeMutablePointer<CChar>? = nil
            guard H5Aread(a, t, &p) >= 0 else { throw MetatrainError("\(path): cannot read attribute '\(name)'") }
            defer { free(p) }
            return p.map { String(cString: $0) } ?? ""
        }
        let size = H5Tget_size(ft)
        var buf = [CChar](repeating: 0, count: size + 1)
        guard H5Aread(a, ft, &buf) >= 0 else { throw MetatrainError("\(path): cannot read attribute '\(name)'") }
        return cString(buf)
    }

    public func intAttribute(_ name: String) throws -> Int64 {
        let a = try openAttribute(name)
        defer { H5Aclose(a) }
        let ft = H5Aget_type(a)
        defer { H5Tclose(ft) }
        guard H5Tget_class(ft) == H5T_INTEGER else {
            throw MetatrainError("\(path): attribute '\(name)' is not an integer")
        }
        var v: Int64 = 0
        guard H5Aread(a, mt_h5t_native_int64(), &v) >= 0 else {
            throw MetatrainError("\(path): cannot read attribute '\(name)'")
        }
        return v
    }

    /// Flushes everything to disk.
    public func flush() throws {
        guard H5Fflush(id, H5F_SCOPE_GLOBAL) >= 0 else { throw MetatrainError("\(path): cannot flush") }
    }
}

/// A NUL-terminated C buffer as a String.
func cString(_ buf: [CChar]) -> String {
    let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}
