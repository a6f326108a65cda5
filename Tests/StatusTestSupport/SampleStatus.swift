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
    return StatusDocument(
        role: "receiver", version: walshipVersion, host: "dr", generatedAt: at,
        process: .init(pid: 42, startedAt: at.addingTimeInterval(-3600), residentMemoryBytes: 30 << 20),
        state: "listening", stateSince: at.addingTimeInterval(-3600), alerts: alerts,
        systems: [
            .init(
                systemIdentifier: "7301", timeline: 1,
                link: .init(
                    connected: connected, peer: "10.0.0.1:4000", senderName: "walship", synchronous: true,
                    disconnectedSince: connected ? nil : at.addingTimeInterval(-90)),
                chain: chain)
        ],
        spool: .init(path: "/spool", totalBytes: 1000, freeBytes: 250, usedBytes: 100))
}
