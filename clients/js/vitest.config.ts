import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // The end-to-end tests start hubs and wait out a token's expiry.
    testTimeout: 30000,
    hookTimeout: 30000,
  },
});
