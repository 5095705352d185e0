`timescale 1ns/1ps
// One AXI4 slave port of the co-simulation memory model (simulation only).
//
// tb_top (sim/tb_top.v.j2) puts one of these on every AXI master of the DUT, all on one memory
// array that tb_top owns; the port tells tb_top which word it reads (rd_word -> rd_data, read
// combinationally) and which word it writes (wr_en, wr_word with the W beat's data and strobes).
//
// Timing model (the cycle counter `cycle` runs from reset):
// * a burst whose AR is accepted at clock edge t has its first R beat offered (RVALID high) from
//   edge t + max(latency, 1) on, the other beats one per cycle, bursts strictly in order (IDs 0);
// * W beats are taken once their AW was accepted; the B response of a burst is offered from
//   max(latency, 1) cycles after its last W beat;
// * a beat is only offered (RVALID / WREADY) while the shared bandwidth budget is open
//   (`bucket_open`, tb_top's token bucket); every R and W handshake spends one beat of it;
// * with `backpressure` each channel also stalls at random (30% of cycles, own seed per channel).
// Addresses are byte addresses; bursts are INCR of full-width beats (AxSIZE is not looked at).
/* verilator lint_off UNUSEDSIGNAL */
module tb_axi_mem_port #(
    parameter integer DW     = 64,   // data width, bits
    parameter integer AW     = 64,   // address width
    parameter integer LW     = 8,    // AxLEN width
    parameter integer MEM_AW = 17,   // log2 of the memory's words
    parameter integer SEED   = 1     // backpressure pattern of this port
) (
    input  wire              clk,
    input  wire              rst_n,
    input  wire [63:0]       cycle,
    input  wire [31:0]       latency,
    input  wire [63:0]       mem_bytes,     // accesses must end below this
    input  wire              bucket_open,
    input  wire              backpressure,

    input  wire              arvalid,
    output wire              arready,
    input  wire [AW-1:0]     araddr,
    input  wire [LW-1:0]     arlen,
    output reg               rvalid,
    input  wire              rready,
    output reg  [DW-1:0]     rdata,
    output reg               rlast,

    input  wire              awvalid,
    output wire              awready,
    input  wire [AW-1:0]     awaddr,
    input  wire [LW-1:0]     awlen,
    input  wire              wvalid,
    output wire              wready,
    input  wire              wlast,
    output reg               bvalid,
    input  wire              bready,

    output wire [MEM_AW-1:0] rd_word,
    input  wire [DW-1:0]     rd_data,
    output wire              wr_en,
    output wire [MEM_AW-1:0] wr_word,

    output wire              ar_hs,         // an AR was accepted this cycle (tb_top logs it)
    output wire [1:0]        beats,         // R + W handshakes this cycle
    output reg  [2:0]        error          // sticky: [0] burst crosses 4 KB, [1] outside the memory,
                                            //         [2] WLAST where the AW's length says otherwise
);
/* verilator lint_on UNUSEDSIGNAL */

    localparam integer BEAT      = DW / 8;
    localparam integer LANE_BITS = $clog2(BEAT);
    localparam integer QD        = 16;      // bursts queued per channel (AR, AW)
    localparam integer BQ        = 32;      // write bursts between AW and B (pending < 7'd32 below)
    /* verilator lint_off WIDTHEXPAND */
    localparam [AW-1:0] BEAT_A   = BEAT;
    /* verilator lint_on WIDTHEXPAND */

    // ---- random stalls (backpressure mode) --------------------------------------------------
    wire st_ar, st_r, st_aw, st_w, st_b;
    tb_stall #(.SEED(SEED * 5 + 0)) u_st_ar (.clk(clk), .enable(backpressure), .stall(st_ar));
    tb_stall #(.SEED(SEED * 5 + 1)) u_st_r  (.clk(clk), .enable(backpressure), .stall(st_r));
    tb_stall #(.SEED(SEED * 5 + 2)) u_st_aw (.clk(clk), .enable(backpressure), .stall(st_aw));
    tb_stall #(.SEED(SEED * 5 + 3)) u_st_w  (.clk(clk), .enable(backpressure), .stall(st_w));
    tb_stall #(.SEED(SEED * 5 + 4)) u_st_b  (.clk(clk), .enable(backpressure), .stall(st_b));

    function [2:0] check_burst(input [AW-1:0] addr, input [LW-1:0] len);
        reg [63:0] nbytes, last;
        begin
            nbytes = ({{(64 - LW){1'b0}}, len} + 64'd1) * BEAT;
            last   = {{(64 - AW){1'b0}}, addr} + nbytes;
            check_burst = {1'b0, last > mem_bytes, ({52'd0, addr[11:0]} + nbytes) > 64'd4096};
        end
    endfunction

    // ---- read channel -------------------------------------------------------------------------
    reg [AW-1:0] arq_addr  [0:QD-1];
    reg [LW:0]   arq_beats [0:QD-1];
    reg [63:0]   arq_due   [0:QD-1];
    reg [4:0]    arq_head, arq_tail;
    reg [AW-1:0] rd_addr;                    // next beat of the burst being returned
    reg [LW:0]   rd_left;                    // its beats still to offer (0: none in progress)

    wire [3:0]  arq_h    = arq_head[3:0];
    wire        arq_empty = (arq_head == arq_tail);
    wire        arq_full  = ((arq_tail - arq_head) == 5'd16);
    wire        r_first   = (rd_left == {(LW + 1){1'b0}});
    wire        head_due  = !arq_empty && (cycle >= arq_due[arq_h]);
    wire        r_offer   = (!rvalid || rready) && bucket_open && !st_r && (!r_first || head_due);
    wire [AW-1:0] r_addr  = r_first ? arq_addr[arq_h] : rd_addr;
    wire [LW:0]   r_left  = r_first ? arq_beats[arq_h] : rd_left;

    assign arready = !arq_full && !st_ar;
    assign ar_hs   = arvalid && arready;
    assign rd_word = r_addr[LANE_BITS +: MEM_AW];

    always @(posedge clk) begin
        if (!rst_n) begin
            arq_head <= 5'd0;
            arq_tail <= 5'd0;
            rd_left  <= {(LW + 1){1'b0}};
            rvalid   <= 1'b0;
            rlast    <= 1'b0;
        end else begin
            if (ar_hs) begin
                arq_addr[arq_tail[3:0]]  <= araddr;
                arq_beats[arq_tail[3:0]] <= {1'b0, arlen} + 1'b1;
                arq_due[arq_tail[3:0]]   <= cycle + {32'd0, latency};
                arq_tail <= arq_tail + 5'd1;
            end
            if (rvalid && rready) rvalid <= 1'b0;
            if (r_offer) begin
                rvalid  <= 1'b1;
                rdata   <= rd_data;
                rlast   <= (r_left == {{LW{1'b0}}, 1'b1});
                rd_addr <= r_addr + BEAT_A;
                rd_left <= r_left - 1'b1;
                if (r_first) arq_head <= arq_head + 5'd1;
            end
        end
    end

    // ---- write channels -----------------------------------------------------------------------
    reg [AW-1:0] awq_addr  [0:QD-1];
    reg [LW:0]   awq_beats [0:QD-1];
    reg [4:0]    awq_head, awq_tail;
    reg [AW-1:0] wr_addr;
    reg [LW:0]   wr_left;
    reg [63:0]   bq_due [0:BQ-1];
    reg [5:0]    bq_head, bq_tail;

    wire [3:0]  awq_h     = awq_head[3:0];
    wire        awq_empty = (awq_head == awq_tail);
    wire        awq_full  = ((awq_tail - awq_head) == 5'd16);
    wire        w_first   = (wr_left == {(LW + 1){1'b0}});
    wire [AW-1:0] w_addr  = w_first ? awq_addr[awq_h] : wr_addr;
    wire [LW:0]   w_left  = w_first ? awq_beats[awq_h] : wr_left;
    wire        w_last    = (w_left == {{LW{1'b0}}, 1'b1});
    wire        w_hs      = wvalid && wready;
    wire        bq_empty  = (bq_head == bq_tail);
    // every burst between AW and B must find a place in the B queue
    wire [6:0]  pending   = {2'd0, awq_tail - awq_head} + {6'd0, !w_first} + {1'b0, bq_tail - bq_head};
    wire        aw_hs     = awvalid && awready;

    assign awready = !awq_full && (pending < 7'd32) && !st_aw;
    assign wready  = (!w_first || !awq_empty) && bucket_open && !st_w;
    assign wr_en   = w_hs;
    assign wr_word = w_addr[LANE_BITS +: MEM_AW];
    assign beats   = {1'b0, rvalid && rready} + {1'b0, w_hs};

    always @(posedge clk) begin
        if (!rst_n) begin
            awq_head <= 5'd0;
            awq_tail <= 5'd0;
            wr_left  <= {(LW + 1){1'b0}};
            bq_head  <= 6'd0;
            bq_tail  <= 6'd0;
            bvalid   <= 1'b0;
            error    <= 3'd0;
        end else begin
            error <= error | (ar_hs ? check_burst(araddr, arlen) : 3'd0)
                           | (aw_hs ? check_burst(awaddr, awlen) : 3'd0) | {w_hs && (wlast != w_last), 2'b00};
            if (aw_hs) begin
                awq_addr[awq_tail[3:0]]  <= awaddr;
                awq_beats[awq_tail[3:0]] <= {1'b0, awlen} + 1'b1;
                awq_tail <= awq_tail + 5'd1;
            end
            if (w_hs) begin
                wr_addr <= w_addr + BEAT_A;
                wr_left <= w_left - 1'b1;
                if (w_first) awq_head <= awq_head + 5'd1;
                if (w_last) begin
                    bq_due[bq_tail[4:0]] <= cycle + {32'd0, latency};
                    bq_tail <= bq_tail + 6'd1;
                end
            end
            if (bvalid && bready) bvalid <= 1'b0;
            if ((!bvalid || bready) && !bq_empty && (cycle >= bq_due[bq_head[4:0]]) && !st_b) begin
                bvalid  <= 1'b1;
                bq_head <= bq_head + 6'd1;
            end
        end
    end
endmodule

// Random stall of one channel: about 30% of the cycles while enabled, a fixed pattern per SEED.
module tb_stall #(parameter integer SEED = 1) (
    input  wire clk,
    input  wire enable,
    output wire stall
);
    function [31:0] xorshift(input [31:0] v);   // Marsaglia's xorshift32
        reg [31:0] a;
        begin
            a = v ^ (v << 13);
            a = a ^ (a >> 17);
            xorshift = a ^ (a << 5);
        end
    endfunction

    reg [31:0] x = 32'h9E3779B9 ^ (SEED * 32'h85EBCA6B);
    always @(posedge clk) x <= xorshift(x);
    assign stall = enable && (x[9:0] < 10'd307);
endmodule
