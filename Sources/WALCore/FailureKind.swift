/// Whether trying again can help: a set-up failure (a refused login, a missing privilege, a certificate that
/// does not fit, an unusable directory) needs the configuration or the host fixed first; a runtime failure
/// happened to a set-up that had worked. The CLI turns the kind into its exit status (docs/runbook.md lists
/// them), so a service manager does not restart a set-up mistake in a loop.
public enum FailureKind: Sendable, Hashable {
    case setUp
    case runtime
}

/// An error that knows its `FailureKind`; any other error counts as a runtime failure.
public protocol ClassifiedFailure: Error {
    var failureKind: FailureKind { get }
}
