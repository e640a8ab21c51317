import Core
import Datasets

/// The dataset file (docs/FORMATS.md, "Dataset"): `format = "metatrain-dataset"`, version 1.
public enum DatasetFile {
    public static let format = "metatrain-dataset"
    public static let version: Int64 = 1

    /// Writes atomically: a temporary name in the same directory, then rename. HDF5 writes
    /// the file itself (a dataset may be larger than memory should hold twice).
    /// `fingerprint`: the dataset's, if the caller has it already (it reads every array).
    public static func write(_ d: Dataset, to path: String, fingerprint: String? = nil) throws {
        try writeAtomically(to: path) { tmp in
            try HDF5File.writeToDisk(tmp, reserve: d.bytesOnDisk) { f in
                try write(d, into: f, fingerprint: fingerprint ?? d.fingerprint)
            }
        }
    }

    /// The dataset's attributes and arrays, into an open file.
    static func write(_ d: Dataset, into f: HDF5File, fingerprint: String) throws {
        try f.setAttribute("format", format)
        try f.setAttribute("version", version)
        try f.setAttribute("n_items", Int64(d.nItems))
        try f.setAttribute("max_seq_len", Int64(d.maxSeqLen))
        try f.setAttribute("k_support", Int64(d.kSupport))
        try f.setAttribute("q_query", Int64(d.qQuery))
        try f.setAttribute("fingerprint", fingerprint)
        try f.setAttribute("source", d.source)
        if !d.prepareJSON.isEmpty { try f.setAttribute("prepare", d.prepareJSON) }
        try f.writeStrings("vocab/item_ids", d.itemIds)
        try d.itemCounts.withUnsafeBufferPointer { try f.write("vocab/item_counts", $0, shape: [$0.count]) }
        try f.writeStrings("users/ids", d.userIds)
        try d.userSplit.withUnsafeBufferPointer { try f.write("users/split", $0, shape: [$0.count]) }
        try d.pairUser.withUnsafeBufferPointer { try f.write("pairs/user", $0, shape: [$0.count]) }
        try d.prefixOffsets.withUnsafeBufferPointer {
            try f.write("pairs/prefix_offsets", $0, shape: [$0.count])
        }
        try d.prefixItems.withUnsafeBufferPointer { try f.write("pairs/prefix_items", $0, shape: [$0.count]) }
        try d.label.withUnsafeBufferPointer { try f.write("pairs/label", $0, shape: [$0.count]) }
        try d.timestamp.withUnsafeBufferPointer { try f.write("pairs/timestamp", $0, shape: [$0.count]) }
        try d.reliability.withUnsafeBufferPointer { try f.write("pairs/reliability", $0, shape: [$0.count]) }
        for s in SplitKind.allCases {
            let e = d.episodes(s)
            try e.support.withUnsafeBufferPointer {
                try f.write("episodes/\(s.name)/support", $0, shape: [e.count, d.kSupport])
            }
            try e.query.withUnsafeBufferPointer {
                try f.write("episodes/\(s.name)/query", $0, shape: [e.count, d.qQuery])
            }
            try e.user.withUnsafeBufferPointer { try f.write("episodes/\(s.name)/user", $0, shape: [$0.count]) }
        }
    }

    /// Just the fingerprint attribute (cheap: no datasets read).
    public static func fingerprint(of path: String) throws -> String {
        let f = try HDF5File.open(path)
        try checkFormat(f)
        return try f.stringAttribute("fingerprint")
    }

    static func checkFormat(_ f: HDF5File) throws {
        guard f.hasAttribute("format"), try f.stringAttribute("format") == format else {
            throw MetatrainError("\(f.path): not a metatrain dataset (format attribute is not '\(format)')")
        }
        let v = try f.intAttribute("version")
        guard v == version else {
            throw MetatrainError("\(f.path): dataset version \(v) is not supported (expected \(version))")
        }
    }

    /// Reads and validates a dataset file: format, version, shapes, index ranges
    /// and the stored fingerprint against the contents.
    public static func read(_ path: String) throws -> Dataset {
        let f = try HDF5File.open(path)
        // The numbers are used where they lie in the mapped file: the processes on a host
        // share one copy through the page cache. A dataset that cannot be used in place is read.
        let mapping = try FileMapping(path)
        func column<T: HDF5Scalar>(_ name: String, _: T.Type, shape: [Int]? = nil) throws -> Column<T> {
            if let m = try f.mapped(name, as: T.self, shape: shape, in: mapping) {
                return Column(viewing: m.values, owner: mapping)
            }
            return Column(try f.read(name, as: T.self, shape: shape).values)
        }
        try checkFormat(f)
        let V = Int(try f.intAttribute("n_items")), L = Int(try f.intAttribute("max_seq_len"))
        let K = Int(try f.intAttribute("k_support")), Q = Int(try f.intAttribute("q_query"))
        let itemIds = try f.readStrings("vocab/item_ids")
        guard itemIds.count == V else {
            throw MetatrainError("\(path): vocab/item_ids has \(itemIds.count) entries, n_items is \(V)")
        }
        let itemCounts = try column("vocab/item_counts", Int64.self, shape: [V])
        let userIds = try f.readStrings("users/ids")
        let userSplit = try column("users/split", Int8.self, shape: [userIds.count])
        let pairUser = try column("pairs/user", Int32.self)
        let P = pairUser.count
        let offsets = try column("pairs/prefix_offsets", Int64.self, shape: [P + 1])
        let items = try column("pairs/prefix_items", Int32.self)
        guard offsets.first == 0, offsets.last == Int64(items.count) else {
            throw MetatrainError("\(path): pairs/prefix_offsets do not cover pairs/prefix_items")
        }
        // Every prefix: a run of 1 to max_seq_len items, in order (a worker would trap on anything else).
        guard V >= 2, L >= 1, K >= 1, Q >= 1 else {
            throw MetatrainError(
                "\(path): n_items \(V), max_seq_len \(L), k_support \(K), q_query \(Q) must be at least 2, 1, 1, 1")
        }
        for i in 0..<P where offsets[i + 1] - offsets[i] < 1 || offsets[i + 1] - offsets[i] > Int64(L) {
            throw MetatrainError(
                "\(path): pairs/prefix_offsets[\(i)...\(i + 1)] = \(offsets[i])...\(offsets[i + 1]) is not a prefix of 1 to \(L) items"
            )
        }
        let label = try column("pairs/label", Int32.self, shape: [P])
        let timestamp = try column("pairs/timestamp", Int64.self, shape: [P])
        let reliability = try column("pairs/reliability", Float.self, shape: [P])
        for (i, x) in items.enumerated() where x < 1 || Int(x) >= V {
            throw MetatrainError("\(path): pairs/prefix_items[\(i)] = \(x) is outside 1..<\(V)")
        }
        for (i, x) in label.enumerated() where x < 1 || Int(x) >= V {
            throw MetatrainError("\(path): pairs/label[\(i)] = \(x) is outside 1..<\(V)")
        }
        var episodes: [SplitKind: Episodes] = [:]
        for s in SplitKind.allCases {
            let user = try column("episodes/\(s.name)/user", Int32.self)
            let support = try column("episodes/\(s.name)/support", Int64.self, shape: [user.count, K])
            let query = try column("episodes/\(s.name)/query", Int64.self, shape: [user.count, Q])
            for x in [support, query].joined() where x < 0 || x >= Int64(P) {
                throw MetatrainError("\(path): episodes/\(s.name) refers to pair \(x), but there are \(P) pairs")
            }
            episodes[s] = Episodes(k: K, q: Q, support: support, query: query, user: user)
        }
        var d = Dataset(
            itemIds: itemIds, itemCounts: itemCounts, userIds: userIds, userSplit: userSplit,
            pairUser: pairUser, prefixOffsets: offsets, prefixItems: items, label: label,
            timestamp: timestamp, reliability: reliability, episodes: episodes,
            maxSeqLen: L, kSupport: K, qQuery: Q, source: try f.stringAttribute("source"))
        if f.hasAttribute("prepare") { d.prepareJSON = try f.stringAttribute("prepare") }
        let stored = try f.stringAttribute("fingerprint")
        guard d.fingerprint == stored else {
            throw MetatrainError("\(path): contents do not match the stored fingerprint (file modified or corrupt)")
        }
        return d
    }
}

extension Dataset {
    /// About what its file takes on disk: the numbers, the ids and 1 MB for HDF5's own records.
    var bytesOnDisk: Int {
        func n<T>(_ c: Column<T>) -> Int { c.count * MemoryLayout<T>.stride }
        var total = n(itemCounts) + n(userSplit) + n(pairUser) + n(prefixOffsets) + n(prefixItems) + n(label)
        total += n(timestamp) + n(reliability)
        for e in episodes.values { total += n(e.support) + n(e.query) + n(e.user) }
        total += (itemIds + userIds).reduce(0) { $0 + $1.utf8.count + 32 } + source.utf8.count + prepareJSON.utf8.count
        return total + total / 100 + (1 << 20)
    }
}
