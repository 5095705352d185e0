`timescale 1ns/1ps
// Test harness of cs_vec (tests/test_rtl_vec.py): the unit plus the param ring a core would
// give it, a synchronous block RAM of gamma / beta beats with a read enable, written by the
// testbench through pw_*. Every other port of the unit is a port of the harness.
module cs_vec_tb #(
    parameter EPB = 16, parameter EB = 1, parameter ABITS = 8, parameter ACC_W = 32,
    parameter MULT_W = 33, parameter MAX_DIM = 768, parameter TAG_W = 16
) (
    input  wire                         clk,
    input  wire                         rst_n,
    input  wire [1:0]                   cfg_mode,
    input  wire [31:0]                  cfg_shift,
    input  wire [MULT_W-1:0]            cfg_ma,
    input  wire [MULT_W-1:0]            cfg_mb,
    input  wire                         cfg_gelu,
    input  wire                         cfg_lut_sel,
    input  wire [$clog2(MAX_DIM+1)-1:0] cfg_dim,
    input  wire [31:0]                  cfg_eps,
    input  wire [31:0]                  cfg_ln_shift,
    input  wire                         in_valid,
    output wire                         in_ready,
    input  wire [EPB*ACC_W-1:0]         in_acc,
    input  wire [EPB*32-1:0]            in_bias,
    input  wire [EPB*MULT_W-1:0]        in_mult,
    input  wire [EPB*8*EB-1:0]          in_x,
    input  wire [TAG_W-1:0]             in_tag,
    input  wire                         inb_valid,
    output wire                         inb_ready,
    input  wire [EPB*8*EB-1:0]          inb_y,
    output wire                         out_valid,
    input  wire                         out_ready,
    output wire [EPB*8*EB-1:0]          out_y,
    output wire [TAG_W-1:0]             out_tag,
    input  wire                         lut_we,
    input  wire                         lut_wsel,
    input  wire [ABITS-$clog2(EPB)-1:0] lut_waddr,
    input  wire [EPB*8*EB-1:0]          lut_wdata,
    output wire                         idle,
    // param ring write port (testbench)
    input  wire                         pw_we,
    input  wire [$clog2(MAX_DIM/EPB)-1:0] pw_addr,
    input  wire [EPB*32-1:0]            pw_gamma,
    input  wire [EPB*32-1:0]            pw_beta
);
    localparam NB = MAX_DIM / EPB;
    reg  [EPB*32-1:0] gamma_mem [0:NB-1];
    reg  [EPB*32-1:0] beta_mem  [0:NB-1];
    reg  [EPB*32-1:0] par_gamma, par_beta;
    wire              par_re;
    wire [$clog2(MAX_DIM/EPB)-1:0] par_addr;

    always @(posedge clk) begin
        if (pw_we) begin
            gamma_mem[pw_addr] <= pw_gamma;
            beta_mem[pw_addr]  <= pw_beta;
        end
        if (par_re) begin
            par_gamma <= gamma_mem[par_addr];
            par_beta  <= beta_mem[par_addr];
        end
    end

    cs_vec #(.EPB(EPB), .EB(EB), .ABITS(ABITS), .ACC_W(ACC_W), .MULT_W(MULT_W), .MAX_DIM(MAX_DIM),
             .TAG_W(TAG_W), .GELU(1)) dut (
        .clk(clk), .rst_n(rst_n),
        .cfg_mode(cfg_mode), .cfg_shift(cfg_shift), .cfg_ma(cfg_ma), .cfg_mb(cfg_mb),
        .cfg_gelu(cfg_gelu), .cfg_lut_sel(cfg_lut_sel), .cfg_dim(cfg_dim), .cfg_eps(cfg_eps),
        .cfg_ln_shift(cfg_ln_shift),
        .in_valid(in_valid), .in_ready(in_ready), .in_acc(in_acc), .in_bias(in_bias), .in_mult(in_mult),
        .in_x(in_x), .in_tag(in_tag), .inb_valid(inb_valid), .inb_ready(inb_ready), .inb_y(inb_y),
        .out_valid(out_valid), .out_ready(out_ready), .out_y(out_y), .out_tag(out_tag),
        .par_re(par_re), .par_addr(par_addr), .par_gamma(par_gamma), .par_beta(par_beta),
        .lut_we(lut_we), .lut_wsel(lut_wsel), .lut_waddr(lut_waddr), .lut_wdata(lut_wdata), .idle(idle));
endmodule
