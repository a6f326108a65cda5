import Foundation
import StatusModel

public func sampleReceiver(
    connected: Bool = true, durableBehindBytes: UInt64 = 0, seconds: Double = 0.2,
    alerts: [StatusDocument.ActiveAlert] = []
) -> StatusDocument {
    let at = Date(timeIntervalSince1970: 1_800_000_000)
    let chain: [StatusDocument.Stage] = [
        .init(name: "primary", lsn: "0/5000000", bytesBehind: 0, secondsBehind: 0),
        .init(name: "sent", lsn: nil, bytesBehind: nil, secondsBehind: nil),
        .init(name: "received", lsn: "0/5000000", bytesBehind: 0, secondsBehind: 0),
        .init(name: "durable", lsn: "0/4F00000", bytesBehind: durableBehindBytes, secondsBehind: seconds),
        .init(name: "replayed", lsn: nil, bytesBehind: nil, secondsBehind: nil),
    ]
    var system = StatusDocument.SystemStatus(
        systemIdentifier: "7301", timeline: 1,
        link: .init(
            connected: connected, peer: "10.0.0.1:4000", senderName: "walship", synchronous: true,
            disconnectedSince: connected ? nil : at.addingTimeInterval(-90)),
        chain: chain)
    system.newestBackup = .init(id: "20270115T070000Z", takenAt: at.addingTimeInterval(-7200), stopLSN: "0/3000100")
    system.archive = .init(
        destination: "s3://dr-archive/walship/7301/", lagSegments: 2, lagBytes: 9 << 20, lagSeconds: 12,
        archivedObjects: 40, lastArchived: "000000010000000000000004.lz4", lastArchivedAt: at.addingTimeInterval(-10))
    system.archive?.retentionDeletedObjects = 12
    system.archive?.retentionRefusedObjects = 0
    return StatusDocument(
        role: "receiver", version: walshipVersion, host: "dr", generatedAt: at,
        process: .init(pid: 42, startedAt: at.addingTimeInterval(-3600), residentMemoryBytes: 30 << 20),
        state: "listening", stateSince: at.addingTimeInterval(-3600), alerts: alerts,
        systems: [system],
        spool: .init(path: "/spool", totalBytes: 1000, freeBytes: 250, usedBytes: 100))
}

/// A sender's status document with every field its metrics come from: a synchronous link under
/// `degrade-after`, degraded, its slot, the counters and the mode.
public func sampleSender() -> StatusDocument {
    let at = Date(timeIntervalSince1970: 1_800_000_000)
    let chain: [StatusDocument.Stage] = [
        .init(name: "primary", lsn: "0/5000000", bytesBehind: 0, secondsBehind: 0),
        .init(name: "sent", lsn: "0/5000000", bytesBehind: 0, secondsBehind: 0),
        .init(name: "received", lsn: "0/4F00000", bytesBehind: 1_048_576, secondsBehind: 0.8),
        .init(name: "durable", lsn: "0/4F00000", bytesBehind: 1_048_576, secondsBehind: 0.8),
        .init(name: "replayed", lsn: nil, bytesBehind: nil, secondsBehind: nil),
    ]
    let mode = StatusDocument.ModeStatus(
        mode: "degraded", since: at.addingTimeInterval(-60), synchronousRequested: true, syncState: "sync",
        receiverLoss: "degrade-after=30s")
    return StatusDocument(
        role: "sender", version: walshipVersion, host: "pg-main", generatedAt: at,
        process: .init(pid: 43, startedAt: at.addingTimeInterval(-7200), residentMemoryBytes: 20 << 20),
        state: "degraded", stateSince: at.addingTimeInterval(-60),
        systems: [
            .init(
                systemIdentifier: "7301", timeline: 1,
                link: .init(
                    connected: false, peer: "dr:7000", senderName: "walship", synchronous: true,
                    disconnectedSince: at.addingTimeInterval(-60), lastMessageAgeSeconds: 60, lastPrimaryMessageAgeSeconds: 0.1
                ),
                chain: chain, clockSkewSeconds: 0.02)
        ],
        sender: .init(
            source: "host=/var/run/postgresql user=walship", receiver: "dr:7000", synchronous: true,
            applicationName: "walship", walBytesSent: 80 << 20, walFramesSent: 120, wireBytesSent: 30 << 20,
            compression: "auto", walFramesHighCompression: 7,
            slot: .init(
                name: "walship", walStatus: "reserved", restartLSN: "0/4F00000", retainedBytes: 1_048_576,
                safeWALSizeBytes: 1 << 30, active: true, checkedAt: at),
            receiverLossPolicy: "degrade-after=30s", degraded: true, degradedSince: at.addingTimeInterval(-30),
            rpoExposure: .init(bytes: 1_048_576, seconds: 0.8, acknowledgedLSN: "0/5000000", offsiteDurableLSN: "0/4F00000"),
            mode: mode))
}
