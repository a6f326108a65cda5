import Foundation
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

    public init(
        systemIdentifier: UInt64, timeline: TimeLineID, durable: LSN, segmentSize: WALSegmentSize,
        historyFiles: [TimeLineID: [UInt8]] = [:], slots: [String: LSN] = [:]
    ) {
        self.systemIdentifier = systemIdentifier
        self.timeline = timeline
        self.durable = durable
        self.segmentSize = segmentSize
        self.historyFiles = historyFiles
        self.slots = slots
    }

    /// Where `timeline` ended and which timeline followed it, from the newest history file.
    func end(of timeline: TimeLineID) -> WalSenderStateMachine.TimelineEnd? {
        guard timeline < self.timeline, let bytes = historyFiles[self.timeline] else { return nil }
        return .init(of: timeline, history: String(decoding: bytes, as: UTF8.self), current: self.timeline)
    }
}

/// The walsender side of one standby connection, as a pure state machine: startup and authentication,
/// replication commands answered from a spool snapshot, and the end of a historic timeline. The session
/// performs the actions (and the WAL reading); every decision is here and unit-tested.
public struct WalSenderStateMachine: Sendable {
    public struct TimelineEnd: Hashable, Sendable {
        public var switchPoint: LSN
        public var next: TimeLineID

        public init(switchPoint: LSN, next: TimeLineID) {
            self.switchPoint = switchPoint
            self.next = next
        }

        /// Where `timeline` ended and which timeline followed it, from the history file of timeline `current`.
        init?(of timeline: TimeLineID, history: String, current: TimeLineID) {
            guard let entries = try? parseTimelineHistory(history),
                let end = timelineEnd(of: timeline, history: entries, current: current)
            else { return nil }
            self.init(switchPoint: end.switchPoint, next: end.next)
        }
    }

    public struct Column: Hashable, Sendable {
        public var name: String
        public var typeOID: UInt32
    }

    public enum State: Hashable, Sendable {
        case awaitingStartup
        case awaitingSASLInitial(user: String)
        case awaitingSASLResponse(user: String, exchange: SCRAMServer)
        case ready
        case streaming(timeline: TimeLineID, end: TimelineEnd?, endReached: Bool)
        case closed
    }

    public enum Action: Hashable, Sendable {
        /// Answer an SSL or GSS encryption request with `N`.
        case refuseEncryption
        /// Answer an SSL request with `S` and start the TLS handshake; the startup packet follows inside TLS.
        case acceptEncryption
        /// AuthenticationSASL offering SCRAM-SHA-256.
        case requestSASL
        /// AuthenticationSASLContinue with the server-first-message.
        case saslContinue(String)
        /// (AuthenticationSASLFinal with the server signature, when SCRAM was used,) AuthenticationOk,
        /// parameter status, BackendKeyData, ReadyForQuery.
        case accept(applicationName: String, saslFinal: String? = nil)
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
    /// Nil for trust; otherwise the credential a standby must prove it knows.
    let verifier: SCRAMVerifier?
    let serverNonce: String
    /// The endpoint serves TLS and requires it: a standby must ask for it before its startup packet.
    let requireTLS: Bool
    public private(set) var encrypted = false

    /// `serverNonce` is random unless a test fixes it.
    public init(authentication: StandbyAuthentication, requireTLS: Bool = false, serverNonce: String? = nil) {
        self.requireTLS = requireTLS
        switch authentication {
        case .trust: verifier = nil
        case .scram(let v): verifier = v
        }
        self.serverNonce = serverNonce ?? Data((0..<18).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
    }

    // MARK: Startup

    public mutating func startupMessage(_ message: FrontendMessage) -> Action {
        switch (state, message) {
        case (.awaitingStartup, .sslRequest) where requireTLS && !encrypted:
            encrypted = true
            return .acceptEncryption
        case (.awaitingStartup, .sslRequest), (.awaitingStartup, .gssEncryptionRequest):
            return .refuseEncryption
        case (.awaitingStartup, .startup) where requireTLS && !encrypted:
            state = .closed
            return .error(
                code: "28000",
                message:
                    "this walship standby endpoint requires TLS (hint: add sslmode=require, or verify-full with sslrootcert, to the standby's primary_conninfo)",
                fatal: true)
        case (.awaitingStartup, .startup(let parameters)):
            guard parameters["replication"].map({ ["true", "on", "yes", "1"].contains($0.lowercased()) }) == true else {
                state = .closed
                return .error(
                    code: "08P01", message: "walship serves physical replication connections only (replication=true)", fatal: true
                )
            }
            applicationName = parameters["application_name"] ?? "walreceiver"
            guard verifier != nil else {
                state = .ready
                return .accept(applicationName: applicationName)
            }
            state = .awaitingSASLInitial(user: parameters["user"] ?? "")
            return .requestSASL
        case (.awaitingSASLInitial(let user), .password(let body)):
            // SASLInitialResponse: mechanism (C string), data length (Int32, -1 for none), data.
            guard let verifier, let nul = body.firstIndex(of: 0), body.count >= nul + 5,
                String(decoding: body[..<nul], as: UTF8.self) == "SCRAM-SHA-256"
            else {
                state = .closed
                return .error(code: "28000", message: "SCRAM-SHA-256 authentication expected for user \"\(user)\"", fatal: true)
            }
            let data = String(decoding: body[(nul + 5)...], as: UTF8.self)
            var exchange = SCRAMServer(verifier: verifier, serverNonce: serverNonce)
            do {
                let serverFirst = try exchange.clientFirst(data)
                state = .awaitingSASLResponse(user: user, exchange: exchange)
                return .saslContinue(serverFirst)
            } catch {
                state = .closed
                return .error(code: "08P01", message: "\(error)", fatal: true)
            }
        case (.awaitingSASLResponse(let user, let exchange), .password(let body)):
            do {
                let serverFinal = try exchange.clientFinal(String(decoding: body, as: UTF8.self))
                state = .ready
                return .accept(applicationName: applicationName, saslFinal: serverFinal)
            } catch SCRAMServer.Failure.wrongProof {
                state = .closed
                return .error(code: "28P01", message: "password authentication failed for user \"\(user)\"", fatal: true)
            } catch {
                state = .closed
                return .error(code: "08P01", message: "\(error)", fatal: true)
            }
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
            return .result(
                columns: [
                    .init(name: "systemid", typeOID: 25), .init(name: "timeline", typeOID: 23),
                    .init(name: "xlogpos", typeOID: 25), .init(name: "dbname", typeOID: 25),
                ],
                rows: [
                    [
                        Array(String(spool.systemIdentifier).utf8), Array(String(spool.timeline).utf8),
                        Array(spool.durable.description.utf8), nil,
                    ]
                ],
                tag: "IDENTIFY_SYSTEM")
        case .timelineHistory(let tli):
            let name = historyFileName(timeline: tli)
            guard let content = spool.historyFiles[tli] else {
                return .error(
                    code: "58P01", message: "could not open file \"pg_wal/\(name)\": No such file or directory", fatal: false)
            }
            // Raw bytes as text (OID 25), exactly as PostgreSQL sends them: never bytea-escaped.
            return .result(
                columns: [.init(name: "filename", typeOID: 25), .init(name: "content", typeOID: 25)],
                rows: [[Array(name.utf8), content]], tag: "TIMELINE_HISTORY")
        case .show(let name):
            guard name == "wal_segment_size" else {
                return .error(code: "42704", message: "unrecognized configuration parameter \"\(name)\"", fatal: false)
            }
            return .result(
                columns: [.init(name: name, typeOID: 25)], rows: [[Array(spool.segmentSize.description.utf8)]], tag: "SHOW")
        case .readReplicationSlot(let slot):
            let row: [[UInt8]?] =
                spool.slots[slot].map {
                    [Array("physical".utf8), Array($0.description.utf8), Array(String(spool.timeline).utf8)]
                } ?? [nil, nil, nil]
            return .result(
                columns: [
                    .init(name: "slot_type", typeOID: 25), .init(name: "restart_lsn", typeOID: 25),
                    .init(name: "restart_tli", typeOID: 20),
                ], rows: [row], tag: "READ_REPLICATION_SLOT")
        case .startReplication(let slot, let start, let requested):
            let timeline = requested ?? spool.timeline
            var end: TimelineEnd?
            if timeline != spool.timeline {
                guard let found = spool.end(of: timeline) else {
                    return .error(
                        code: "58P01", message: "requested timeline \(timeline) is not in this server's history", fatal: false)
                }
                guard start <= found.switchPoint else {
                    return .error(
                        code: "58P01",
                        message: "requested starting point \(start) on timeline \(timeline) is not in this server's history",
                        fatal: false)
                }
                end = found
            } else if start > spool.durable {
                return .error(
                    code: "58P01",
                    message:
                        "requested starting point \(start) is ahead of the WAL flush position of this server \(spool.durable)",
                    fatal: false)
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

    /// Everything of the timeline was sent, followed by our CopyDone: a historic timeline to the end known at
    /// the start, or a live one to the end `sent` the stream found when the spool switched timelines.
    public mutating func historicTimelineSent(_ sent: TimelineEnd) {
        if case .streaming(let tli, let end, _) = state { state = .streaming(timeline: tli, end: end ?? sent, endReached: true) }
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
