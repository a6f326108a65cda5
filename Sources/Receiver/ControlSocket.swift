import Foundation
import NIOCore
import NIOPosix
import StatusModel

/// `SPOOL/<system>/control.sock`: a Unix domain socket where `walship promote` asks the running receiver whether
/// the system's primary is lost. A client writes one line (`readiness`) and reads one line of JSON back (a
/// `ReadinessReport`, or `{"error": …}`); the receiver then closes the connection. `standbys` is answered with
/// the standbys the endpoint has served since it started (`[StandbyPresence]`), for `walship standby forget`. The file has mode 0660: the
/// receiver's user and group (the spool's owner, or root) may ask, nobody else.
enum ControlSocket {
    static let fileName = "control.sock"
    /// Longest request line taken; anything longer is answered with an error.
    static let maxRequestBytes = 256
    /// `sun_path` holds 108 bytes with the terminating NUL.
    static let maxPathBytes = 107

    static func path(systemDirectory: String) -> String { systemDirectory + "/" + fileName }

    /// The answer to one request line.
    static func answer(
        _ request: String, readiness: () -> ReadinessReport, standbys: () -> [StandbyPresence] = { [] }
    ) -> String {
        switch request.trimmingCharacters(in: .whitespacesAndNewlines) {
        case "readiness":
            let data = (try? StatusDocument.encoder(pretty: false).encode(readiness())) ?? Data()
            return String(decoding: data, as: UTF8.self)
        case "standbys":
            let data = (try? StatusDocument.encoder(pretty: false).encode(standbys())) ?? Data()
            return String(decoding: data, as: UTF8.self)
        case let other:
            let data =
                (try? JSONEncoder().encode(["error": "unknown request \"\(other.prefix(40))\"; ask \"readiness\" or \"standbys\""]
                ))
                ?? Data()
            return String(decoding: data, as: UTF8.self)
        }
    }

    /// Listens at `path` (replacing a socket file left by an earlier receiver) with mode 0660.
    static func listen(
        at path: String, readiness: @escaping @Sendable () -> ReadinessReport,
        standbys: @escaping @Sendable () -> [StandbyPresence]
    ) async throws -> Channel {
        guard path.utf8.count <= maxPathBytes else {
            throw ControlSocketError(
                "the control socket path \(path) is longer than a Unix socket path may be (\(maxPathBytes) bytes) (hint: use a shorter --spool path)"
            )
        }
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ControlRequestHandler(readiness: readiness, standbys: standbys))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        guard chmod(path, 0o660) == 0 else {
            let error = String(cString: strerror(errno))
            try? await channel.close()
            throw ControlSocketError("cannot set the mode of the control socket \(path): \(error)")
        }
        return channel
    }
}

struct ControlSocketError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Reads one request line, answers it, closes.
private final class ControlRequestHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let readiness: @Sendable () -> ReadinessReport
    private let standbys: @Sendable () -> [StandbyPresence]
    private var request = ""
    private var answered = false

    init(readiness: @escaping @Sendable () -> ReadinessReport, standbys: @escaping @Sendable () -> [StandbyPresence]) {
        self.readiness = readiness
        self.standbys = standbys
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        var buffer = unwrapInboundIn(data)
        request += buffer.readString(length: buffer.readableBytes) ?? ""
        guard request.contains("\n") || request.utf8.count > ControlSocket.maxRequestBytes else { return }
        answered = true
        let line = String(request.prefix { $0 != "\n" }.prefix(ControlSocket.maxRequestBytes))
        let answer = ControlSocket.answer(line, readiness: readiness, standbys: standbys) + "\n"
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: answer)), promise: written)
        written.futureResult.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
    }
}
