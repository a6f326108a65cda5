/// How the primary treats the DR link, as the sender observed it: what a commit acknowledged by the primary
/// promises about the DR site. Only `sync` promises that the commit's WAL is durable offsite.
public enum ReplicationMode: String, Codable, Sendable, CaseIterable {
    /// `pg_stat_replication.sync_state` is `sync` and commits wait for the DR site (`synchronous_commit` on or
    /// stronger by default).
    case sync
    /// `quorum`: commits wait for enough standbys of an `ANY n (…)` set, not necessarily the DR site.
    case quorum
    /// `potential`: the DR site would become synchronous if a synchronous standby went away; commits do not wait
    /// for it now.
    case potential
    /// Commits never wait for the DR site.
    case async
    /// `--on-receiver-loss degrade-after`: the sender acknowledges from its local buffer, the DR site lacks
    /// what it acknowledged (the exposure).
    case degraded
    /// Nothing is known: `sync_state` read as NULL (the role lacks `pg_monitor`), no row for the sender, or a
    /// link from a sender that does not report its mode.
    case unknown

    /// The wire code (ship protocol version 2).
    public var code: UInt8 {
        switch self {
        case .sync: 1
        case .quorum: 2
        case .potential: 3
        case .async: 4
        case .degraded: 5
        case .unknown: 0
        }
    }

    public init(code: UInt8) {
        self = Self.allCases.first { $0.code == code } ?? .unknown
    }

    /// How the mode follows from what the primary reports. `syncState` is `pg_stat_replication.sync_state` for
    /// the sender's application name (nil when NULL or absent); `synchronousCommit` is the primary's default
    /// `synchronous_commit`. A default of `local` or `off` means commits do not wait, whatever `sync_state` says.
    public static func observed(syncState: String?, synchronousCommit: String?, degraded: Bool) -> ReplicationMode {
        if degraded { return .degraded }
        guard let syncState else { return .unknown }
        switch syncState {
        case "sync":
            switch synchronousCommit {
            case "off", "local": return .async
            case nil: return .unknown
            default: return .sync
            }
        case "quorum": return .quorum
        case "potential": return .potential
        case "async": return .async
        default: return .unknown
        }
    }
}

/// What the sender does when the DR site is unreachable, as the link's hello tells the receiver.
public enum ReceiverLossRule: Hashable, Sendable, CustomStringConvertible {
    /// An asynchronous sender: commits never wait for the DR site.
    case asynchronous
    /// Commits wait until the DR site has their WAL, however long it is away.
    case block
    /// After the DR site has been away this long, commits are acknowledged from the sender's local buffer.
    case degradeAfter(seconds: Double)

    public var description: String {
        switch self {
        case .asynchronous: "none"
        case .block: "block"
        case .degradeAfter(let seconds):
            "degrade-after \(seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)) s"
        }
    }

    /// Reads `description` back (the mode history keeps the rule in these words); nil for anything else.
    public init?(description: String) {
        switch description {
        case "none": self = .asynchronous
        case "block": self = .block
        default:
            let words = description.split(separator: " ")
            guard words.count == 3, words[0] == "degrade-after", words[2] == "s", let seconds = Double(words[1]) else {
                return nil
            }
            self = .degradeAfter(seconds: seconds)
        }
    }
}
