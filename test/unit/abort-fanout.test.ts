import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { AbortFanout } from '../../src/abort-fanout.js';

describe('AbortFanout', () => {
  it('puts one listener on a signal for any number of subscribers, and none once they leave', () => {
    const fanout = new AbortFanout();
    const controller = new AbortController();
    const offs = Array.from({ length: 50 }, () => fanout.subscribe(controller.signal, () => undefined));
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(1);
    for (const off of offs) off();
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
    // a later subscriber gets a fresh listener
    const off = fanout.subscribe(controller.signal, () => undefined);
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(1);
    off();
    off(); // twice is harmless
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });

  it('calls every current subscriber once on abort, and not one that left', () => {
    const fanout = new AbortFanout();
    const controller = new AbortController();
    const calls: number[] = [];
    fanout.subscribe(controller.signal, () => calls.push(1));
    const off2 = fanout.subscribe(controller.signal, () => calls.push(2));
    fanout.subscribe(controller.signal, () => calls.push(3));
    off2();
    controller.abort();
    controller.abort();
    expect(calls).toEqual([1, 3]);
    expect(getEventListeners(controller.signal, 'abort')).toHaveLength(0);
  });
});
