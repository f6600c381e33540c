return {redis.call('GET', KEYS[1]) or '0', redis.call('HGETALL', KEYS[2])}
