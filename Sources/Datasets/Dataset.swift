import Core

/// User split codes as stored in `/users/split`.
public enum SplitKind: Int8, CaseIterable, Sendable {
    case train = 0, val = 1, test = 2
    public var name: String { ["train", "val", "test"][Int(rawValue)] }
    public init?(name: String) {
        switch name {
        case "train": self = .train
        case "val", "validation": self = .val
        case "test": self = .test
        default: return nil
        }
    }
}

/// Cold-start episodes of one split: K support and Q query pair indices each,
/// chronological, queries after supports.
public struct Episodes: Equatable, Sendable {
    public var k: Int, q: Int
    /// [N*K] row-major
    public var support: [Int64]
    /// [N*Q] row-major
    public var query: [Int64]
    /// [N]
    public var user: [Int32]
    public var count: Int { user.count }
    public init(k: Int, q: Int, support: [Int64] = [], query: [Int64] = [], user: [Int32] = []) {
        self.k = k; self.q = q; self.support = support; self.query = query; self.user = user
    }
    public func supportPairs(_ e: Int) -> ArraySlice<Int64> { support[(e * k)..<((e + 1) * k)] }
    public func queryPairs(_ e: Int) -> ArraySlice<Int64> { query[(e * q)..<((e + 1) * q)] }
}

/// The contents of a dataset file (docs/FORMATS.md, "Dataset"), in memory.
public struct Dataset: Equatable, Sendable {
    public var itemIds: [String] // [V], index 0 = "<pad>"
    public var itemCounts: [Int64] // [V]
    public var userIds: [String] // [U]
    public var userSplit: [Int8] // [U]
    public var pairUser: [Int32] // [P]
    public var prefixOffsets: [Int64] // [P+1]
    public var prefixItems: [Int32] // [sum]
    public var label: [Int32] // [P]
    public var timestamp: [Int64] // [P]
    public var reliability: [Float] // [P]
    public var episodes: [SplitKind: Episodes]
    public var maxSeqLen: Int
    public var kSupport: Int
    public var qQuery: Int
    public var source: String
    /// The prepare settings that made it (the resolved `data` section as JSON: session gap,
    /// caps of the reliability rule, sequence length, K, Q, split); empty when unknown (files
    /// from before they were recorded, or imported ones).
    public var prepareJSON = ""

    public init(
        itemIds: [String], itemCounts: [Int64], userIds: [String], userSplit: [Int8], pairUser: [Int32],
        prefixOffsets: [Int64], prefixItems: [Int32], label: [Int32], timestamp: [Int64], reliability: [Float],
        episodes: [SplitKind: Episodes], maxSeqLen: Int, kSupport: Int, qQuery: Int, source: String
    ) {
        self.itemIds = itemIds; self.itemCounts = itemCounts; self.userIds = userIds; self.userSplit = userSplit
        self.pairUser = pairUser; self.prefixOffsets = prefixOffsets; self.prefixItems = prefixItems
        self.label = label; self.timestamp = timestamp; self.reliability = reliability; self.episodes = episodes
        self.maxSeqLen = maxSeqLen; self.kSupport = kSupport; self.qQuery = qQuery; self.source = source
    }

    public var nItems: Int { itemIds.count }
    public var nPairs: Int { label.count }
    public var nUsers: Int { userIds.count }

    /// Prefix items of pair p, oldest first.
    @inline(__always) public func prefix(_ p: Int) -> ArraySlice<Int32> {
        prefixItems[Int(prefixOffsets[p])..<Int(prefixOffsets[p + 1])]
    }
    @inline(__always) public func prefixLength(_ p: Int) -> Int { Int(prefixOffsets[p + 1] - prefixOffsets[p]) }

    public func episodes(_ s: SplitKind) -> Episodes { episodes[s] ?? Episodes(k: kSupport, q: qQuery) }

    /// The dataset fingerprint: hex SHA-256 over the datasets in this order —
    /// vocab/item_ids, vocab/item_counts, users/ids, users/split, pairs/user,
    /// pairs/prefix_offsets, pairs/prefix_items, pairs/label, pairs/timestamp,
    /// pairs/reliability, then episodes/{train,val,test}/{support,query,user}.
    /// Each dataset contributes its path in UTF-8 and a NUL byte, then its
    /// elements: numbers as little-endian bytes of their stored type, strings as
    /// UTF-8 followed by a NUL byte.
    public var fingerprint: String {
        var h = SHA256()
        func name(_ s: String) { h.update(string: s); h.update(array: [UInt8(0)]) }
        func strings(_ path: String, _ a: [String]) {
            name(path)
            for s in a { h.update(string: s); h.update(array: [UInt8(0)]) }
        }
        func numbers<T: FixedWidthInteger>(_ path: String, _ a: [T]) {
            name(path); h.update(array: a.map { $0.littleEndian })
        }
        strings("vocab/item_ids", itemIds)
        numbers("vocab/item_counts", itemCounts)
        strings("users/ids", userIds)
        numbers("users/split", userSplit)
        numbers("pairs/user", pairUser)
        numbers("pairs/prefix_offsets", prefixOffsets)
        numbers("pairs/prefix_items", prefixItems)
        numbers("pairs/label", label)
        numbers("pairs/timestamp", timestamp)
        name("pairs/reliability"); h.update(array: reliability.map { $0.bitPattern.littleEndian })
        for s in SplitKind.allCases {
            let e = episodes(s)
            numbers("episodes/\(s.name)/support", e.support)
            numbers("episodes/\(s.name)/query", e.query)
            numbers("episodes/\(s.name)/user", e.user)
        }
        return h.finalizeHex()
    }
}
