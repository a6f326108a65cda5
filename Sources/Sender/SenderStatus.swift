import Foundation

/// What `walship send` reports on `GET /status`. Only redacted values: no passwords, no keys.
public struct SenderStatus: Codable, Sendable {
    public var role = "sender"
    public var state = "starting"
    public var stateSince = Date()
    public var lastError: String?
    public var source: String
    public var receiver: String
    public var synchronous: Bool
    public var applicationName: String
    public var systemIdentifier: String?
    public var timeline: UInt32?
    /// The primary's end of WAL as last seen (XLogData walEnd or keepalive).
    public var primaryLSN: String?
    public var primaryLastMessageAt: Date?
    /// End of WAL handed to the link.
    public var sentLSN: String?
    public var receiverWrittenLSN: String?
    public var receiverDurableLSN: String?
    public var replayedLSN: String?
    public var receiverLastAckAt: Date?
    public var walBytesSent: UInt64 = 0
    public var wireBytesSent: UInt64 = 0
    public var slot: SlotStatus

    public struct SlotStatus: Codable, Sendable {
        public var name: String
        /// `pg_replication_slots.wal_status`: reserved, extended, unreserved or lost.
        public var walStatus: String?
        public var restartLSN: String?
        /// WAL the primary keeps for this slot (current LSN − restart_lsn).
        public var retainedBytes: Int64?
        /// Bytes that can still be written before the slot is in danger of invalidation (NULL = unlimited).
        public var safeWALSizeBytes: Int64?
        public var active: Bool?
        public var checkedAt: Date?
    }
}
