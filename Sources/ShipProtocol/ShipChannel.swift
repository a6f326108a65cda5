import NIOCore
import Synchronization

public typealias ShipAsyncChannel = NIOAsyncChannel<ShipMessage, ShipMessage>

/// The link went quiet for longer than the link timeout: the peer is dead or the network is stalled.
public struct LinkTimeoutError: Error, CustomStringConvertible {
    public let seconds: Int64
    public var description: String { "no frame from the peer for \(seconds) s; the link is considered dead" }
}

public enum ShipChannel {
    /// Installs the frame codec and a read timeout on a fresh channel and wraps it for async use.
    /// Both ends send keepalives well inside `linkTimeout`, so silence means a dead peer or a stalled network.
    public static func configure(_ channel: Channel, linkTimeout: TimeAmount) throws -> ShipAsyncChannel {
        let operations = channel.pipeline.syncOperations
        try operations.addHandler(IdleStateHandler(readTimeout: linkTimeout))
        try operations.addHandler(LinkTimeoutHandler(timeout: linkTimeout))
        try operations.addHandler(ByteToMessageHandler(ShipFrameDecoder()))
        try operations.addHandler(MessageToByteHandler(ShipFrameEncoder()))
        try operations.addHandler(InboundTapHandler())
        // A few frames suffice: the receiver's reader moves them on to its own bounded queue at once, and each
        // frame held here can be a 1 MiB chunk's block.
        return try ShipAsyncChannel(
            wrappingChannelSynchronously: channel,
            configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 4)))
    }
}

/// What a tap does with an inbound message.
public enum TapVerdict: Sendable {
    /// Pass it on to the channel's async reader.
    case forward
    /// Handled on the event loop; the reader never sees it.
    case consumed
    /// Handled on the event loop, and whoever took it has no room for more: read nothing more from the socket
    /// until `ShipChannel.resumeReading(_:)`. The peer then blocks on its full socket, as with a slow reader.
    case consumedAndPause
    /// End the link with this error (the reader's next read throws it). A `Refusal` is sent to the peer first.
    case fail(any Error)
}

extension ShipChannel {
    /// Lets `body` see each inbound message on the event loop before the async reader does. For the hot path
    /// of a link (acks to a synchronous sender, WAL into the receiver's spool queue), where a hop to a task
    /// costs a thread switch per commit. `body` must not block, unless the channel's event loop serves links
    /// alone and waiting there is the point (the receiver's fsync of a synchronous commit). Pass nil to remove it.
    ///
    /// `afterReads` runs on the event loop once the messages of one socket read have all been through `body`,
    /// and once more when the channel closes: where a tap that took several messages finishes what they
    /// share (one fsync for all of them). An error it returns ends the link as `.fail` does.
    public static func setTap(
        on channel: Channel, _ body: (@Sendable (ShipMessage) -> TapVerdict)?,
        afterReads: (@Sendable () -> (any Error)?)? = nil
    ) async throws {
        let box = body.map { TapBox($0, afterReads: afterReads) }
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: InboundTapHandler.self).tap = box
        }.get()
    }

    /// Calls `body` on the event loop each time the channel becomes writable again (its queue of unsent bytes
    /// fell below the low-water mark): how a thread that writes into the channel directly learns to go on.
    public static func whenWritable(_ channel: Channel, _ body: @escaping @Sendable () -> Void) async throws {
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: InboundTapHandler.self).whenWritable = WritableBox(body)
        }.get()
    }

    /// Reads again after a tap paused reading (`TapVerdict.consumedAndPause`); callable from any thread.
    public static func resumeReading(_ channel: Channel) {
        channel.eventLoop.execute {
            try? channel.pipeline.syncOperations.handler(type: InboundTapHandler.self).resumeReading()
        }
    }
}

/// Boxed: a closure kept directly in mutable storage and read back repeatedly can grow reabstraction thunks.
final class TapBox: Sendable {
    let body: @Sendable (ShipMessage) -> TapVerdict
    let afterReads: (@Sendable () -> (any Error)?)?
    init(_ body: @escaping @Sendable (ShipMessage) -> TapVerdict, afterReads: (@Sendable () -> (any Error)?)? = nil) {
        self.body = body
        self.afterReads = afterReads
    }
}

final class WritableBox: Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

/// Event-loop-confined: everything here is only read and written on the channel's event loop.
/// While paused it holds back the pipeline's read requests (the async reader's and auto-read's alike).
final class InboundTapHandler: ChannelDuplexHandler {
    typealias InboundIn = ShipMessage
    typealias InboundOut = ShipMessage
    typealias OutboundIn = ShipMessage
    typealias OutboundOut = ShipMessage
    var tap: TapBox?
    var whenWritable: WritableBox?
    private var context: ChannelHandlerContext?
    private var paused = false
    private var readHeldBack = false

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let tap else { return context.fireChannelRead(data) }
        switch tap.body(unwrapInboundIn(data)) {
        case .forward: context.fireChannelRead(data)
        case .consumed: break
        case .consumedAndPause: paused = true
        case .fail(let error): fail(context: context, error)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let error = tap?.afterReads?() { fail(context: context, error) }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        _ = tap?.afterReads?()
        context.fireChannelInactive()
    }

    private func fail(context: ChannelHandlerContext, _ error: any Error) {
        if let refusal = error as? Refusal {
            context.writeAndFlush(wrapOutboundOut(.refusal(refusal)), promise: nil)
        }
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { whenWritable?.body() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if paused { readHeldBack = true } else { context.read() }
    }

    func resumeReading() {
        paused = false
        if readHeldBack, let context {
            readHeldBack = false
            context.read()
        }
    }
}

final class LinkTimeoutHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    let timeout: TimeAmount

    init(timeout: TimeAmount) { self.timeout = timeout }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.fireErrorCaught(LinkTimeoutError(seconds: timeout.nanoseconds / 1_000_000_000))
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// The link ended without an error of its own (the peer closed it, or a worker returned).
public struct LinkEnded: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "the link was closed" }
}

extension ShipChannel {
    /// Runs one link: `reader` in the current task (an inbound iterator must not leave its task) and each
    /// worker as a child task. The first failure anywhere, reader or worker, ends all of them (the channel is
    /// closed, `onEnd` wakes anything parked elsewhere) and is the error rethrown; a link always ends with one.
    public static func runLink(
        channel: Channel,
        workers: [@Sendable () async throws -> Void],
        onEnd: @escaping @Sendable (any Error) -> Void = { _ in },
        reader: () async throws -> Void
    ) async throws -> Never {
        let first = FirstError()
        await withTaskGroup(of: Void.self) { group in
            for worker in workers {
                group.addTask {
                    do {
                        try await worker()
                        first.record(LinkEnded())
                    } catch {
                        first.record(error)
                    }
                    onEnd(first.error!)
                    channel.close(promise: nil)
                }
            }
            do {
                try await reader()
                first.record(LinkEnded())
            } catch {
                first.record(error)
            }
            onEnd(first.error!)
            group.cancelAll()
            channel.close(promise: nil)
        }
        throw first.error!
    }
}

final class FirstError: Sendable {
    private let box = Mutex<(any Error)?>(nil)
    func record(_ error: any Error) { box.withLock { if $0 == nil { $0 = error } } }
    var error: (any Error)? { box.withLock { $0 } }
}
