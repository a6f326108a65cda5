import WALCore

/// What the standby endpoint knows of the spool when it answers a command.
public struct SpoolSnapshot: Sendable {
    public var systemIdentifier: UInt64
    public var timeline: TimeLineID
    public var durable: LSN
    public var segmentSize: WALSegmentSize
    /// History files the spool holds, by timeline.
    public var historyFiles: [TimeLineID: [UInt8]]
    /// Receiver-side slots and the position their standby replayed.
    public var slots: [String: LSN]

    public init(systemIdentifier: UInt64, timeline: TimeLineID, durable: LSN, segmentSize: WALSegmentSize,
                historyFiles: [TimeLineID: [UInt8]] = [:], slots: [String: LSN] = [:]) {
        self.systemIdentifier = systemIdentifier
        self.timeline = timeline
        self.durable = durable
        self.segmentSize = segmentSize
        self.historyFiles = historyFiles
        self.slots = slots
    }

    /// Where `timeline` ended and which timeline followed it, from the newest history file.
    func end(of timeline: TimeLineID) -> WalSenderStateMachine.TimelineEnd? {
        guard timeline < self.timeline, let bytes = historyFiles[self.timeline],
            let entries = try? parseTimelineHistory(String(decoding: bytes, as: UTF8.self)),
            let end = timelineEnd(of: timeline, history: entries, current: self.timeline)
        else { return nil }
        return .init(switchPoint: end.switchPoint, next: end.next)
    }
}

/// The walsender side of one standby connection, as a pure state machine: startup and authentication,
/// replication commands answered from a spool snapshot, and the end of a historic timeline. The session
/// performs the actions (and the WAL reading); every decision is here and unit-tested.
public struct WalSenderStateMachine: Sendable {
    public struct TimelineEnd: Hashable, Sendable {
        public var switchPoint: LSN
        public var next: TimeLineID
    }

    public struct Column: Hashable, Sendable {
        public var name: String
        public var typeOID: UInt32
    }

    public enum State: Hashable, Sendable {
        case awaitingStartup
        case awaitingPassword(user: String)
        case ready
        case streaming(timeline: TimeLineID, end: TimelineEnd?, endReached: Bool)
        case closed
    }

    public enum Action: Hashable, Sendable {
        /// Answer an SSL or GSS encryption request with `N`.
        case refuseEncryption
        case requestPassword
        /// AuthenticationOk, parameter status, BackendKeyData, ReadyForQuery.
        case accept(applicationName: String)
        /// A result set and ReadyForQuery.
        case result(columns: [Column], rows: [[[UInt8]?]], tag: String)
        /// ErrorResponse; ReadyForQuery follows unless fatal, after which the connection closes.
        case error(code: String, message: String, fatal: Bool)
        /// Check that `start` is in the spool, send CopyBothResponse and stream; stop at `end` for a historic timeline.
        case startStreaming(slot: String?, start: LSN, timeline: TimeLineID, end: TimelineEnd?)
        /// After the standby's CopyDone at the end of a historic timeline: the next timeline and where it starts.
        case endOfTimeline(TimelineEnd)
        case close(reason: String)
    }

    public private(set) var state = State.awaitingStartup
    public private(set) var applicationName = "walreceiver"
    /// Nil for trust; otherwise the password a standby must give.
    let password: [UInt8]?

    public init(authentication: StandbyAuthentication) {
        switch authentication {
        case .trust: password = nil
        case .password(let text): password = Array(text.utf8)
        }
    }

    // MARK: Startup

    public mutating func startupMessage(_ message: FrontendMessage) -> Action {
        switch (state, message) {
        case (.awaitingStartup, .sslRequest), (.awaitingStartup, .gssEncryptionRequest):
            return .refuseEncryption
        case (.awaitingStartup, .startup(let parameters)):
            guard parameters["replication"].map({ ["true", "on", "yes", "1"].contains($0.lowercased()) }) == true else {
                state = .closed
                return .error(code: "08P01", message: "walship serves physical replication connections only (replication=true)", fatal: true)
            }
            applicationName = parameters["application_name"] ?? "walreceiver"
            guard password != nil else {
                state = .ready
                return .accept(applicationName: applicationName)
            }
            state = .awaitingPassword(user: parameters["user"] ?? "")
            return .requestPassword
        case (.awaitingPassword(let user), .password(var given)):
            if given.last == 0 { given.removeLast() }
            guard let password, constantTimeEqual(given, password) else {
                state = .closed
                return .error(code: "28P01", message: "password authentication failed for user \"\(user)\"", fatal: true)
            }
            state = .ready
            return .accept(applicationName: applicationName)
        case (.awaitingStartup, .cancelRequest):
            state = .closed
            return .close(reason: "cancel requests are not supported")
        default:
            state = .closed
            return .close(reason: "unexpected message during startup")
        }
    }

    // MARK: Commands

    public mutating func query(_ text: String, spool: SpoolSnapshot) -> Action {
        guard case .ready = state else {
            state = .closed
            return .close(reason: "a command outside the ready state")
        }
        let command: ReplicationCommand
        do { command = try ReplicationCommand.parse(text) } catch {
            return .error(code: "42601", message: error.description, fatal: false)
        }
        switch command {
        case .identifySystem:
            return .result(columns: [.init(name: "systemid", typeOID: 25), .init(name: "timeline", typeOID: 23),
                                     .init(name: "xlogpos", typeOID: 25), .init(name: "dbname", typeOID: 25)],
                           rows: [[Array(String(spool.systemIdentifier).utf8), Array(String(spool.timeline).utf8),
                                   Array(spool.durable.description.utf8), nil]],
                           tag: "IDENTIFY_SYSTEM")
        case .timelineHistory(let tli):
            let name = historyFileName(timeline: tli)
            guard let content = spool.historyFiles[tli] else {
                return .error(code: "58P01", message: "could not open file \"pg_wal/\(name)\": No such file or directory", fatal: false)
            }
            // Raw bytes as text (OID 25), exactly as PostgreSQL sends them: never bytea-escaped.
            return .result(columns: [.init(name: "filename", typeOID: 25), .init(name: "content", typeOID: 25)],
                           rows: [[Array(name.utf8), content]], tag: "TIMELINE_HISTORY")
        case .show(let name):
            guard name == "wal_segment_size" else {
                return .error(code: "42704", message: "unrecognized configuration parameter \"\(name)\"", fatal: false)
            }
            return .result(columns: [.init(name: name, typeOID: 25)], rows: [[Array(spool.segmentSize.description.utf8)]], tag: "SHOW")
        case .readReplicationSlot(let slot):
            let row: [[UInt8]?] = spool.slots[slot].map {
                [Array("physical".utf8), Array($0.description.utf8), Array(String(spool.timeline).utf8)]
            } ?? [nil, nil, nil]
            return .result(columns: [.init(name: "slot_type", typeOID: 25), .init(name: "restart_lsn", typeOID: 25),
                                     .init(name: "restart_tli", typeOID: 20)], rows: [row], tag: "READ_REPLICATION_SLOT")
        case .startReplication(let slot, let start, let requested):
            let timeline = requested ?? spool.timeline
            var end: TimelineEnd?
            if timeline != spool.timeline {
                guard let found = spool.end(of: timeline) else {
                    return .error(code: "58P01", message: "requested timeline \(timeline) is not in this server's history", fatal: false)
                }
                guard start <= found.switchPoint else {
                    return .error(code: "58P01", message: "requested starting point \(start) on timeline \(timeline) is not in this server's history", fatal: false)
                }
                end = found
            } else if start > spool.durable {
                return .error(code: "58P01", message: "requested starting point \(start) is ahead of the WAL flush position of this server \(spool.durable)", fatal: false)
            }
            state = .streaming(timeline: timeline, end: end, endReached: false)
            return .startStreaming(slot: slot, start: start, timeline: timeline, end: end)
        }
    }

    /// The session could not start streaming after `.startStreaming` (the WAL is not in the spool); it sent an error.
    public mutating func streamingRefused() {
        if case .streaming = state { state = .ready }
    }

    // MARK: Streaming

    /// Everything of the historic timeline was sent, followed by our CopyDone.
    public mutating func historicTimelineSent() {
        if case .streaming(let tli, let end?, _) = state { state = .streaming(timeline: tli, end: end, endReached: true) }
    }

    /// The standby's CopyDone.
    public mutating func copyDoneReceived() -> Action {
        guard case .streaming(_, let end?, true) = state else {
            state = .closed
            return .close(reason: "standby ended streaming")
        }
        state = .ready
        return .endOfTimeline(end)
    }
}
