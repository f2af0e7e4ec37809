/**
 * Request timing for an observer above (metrics). `forExport` is asked once per connection when
 * it enters the transmission phase; the recorder it returns is called on the hot path, so it
 * must not allocate (pre-resolve whatever it keeps per export and command).
 */
export interface NbdRequestObserver {
  forExport(name: string): NbdRequestRecorder | undefined;
}

export interface NbdRequestRecorder {
  /**
   * A request of NBD command `type` (protocol.ts CMD_*) was answered `seconds` after the server
   * took it: its reply (data or error) is queued for the socket. Not timed: reads sent from the
   * file by the sender (64 KiB and more on plain sockets) and writes received natively (128 KiB
   * and more): their replies leave from native code.
   */
  record(type: number, seconds: number): void;
}
